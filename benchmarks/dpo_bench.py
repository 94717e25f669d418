"""DPO step time and peak memory: loris vs TRL DPOTrainer + PEFT (with and without Liger-Kernel's
layer kernels) and Unsloth's patched DPOTrainer, each system in its own process, in one run.

Setting (issue 17): random checkpoints of the Llama-3.2-1B shape (LoRA, bf16) and the Llama-3.1-8B
shape (QLoRA, NF4), built by ../shared/bench/anchor_bench.py make-ckpt; LoRA r=16 alpha 16 on the 7
projections; 2 pairs per step, each sequence 2048 tokens (a 1024-token prompt and 1023-token
answers plus EOS: the synthetic tokenizer maps one ASCII character to one token); beta 0.1,
sigmoid loss, lr 5e-6, adamw_torch, bf16, gradient checkpointing (Unsloth's and loris' offloaded
"unsloth" mode; TRL's non-reentrant). Step time = wall time between optimizer steps (cuda
synchronised), reported as the mean after the first step and as pairs/s; peak =
torch.cuda.max_memory_allocated over the training steps.

    python benchmarks/dpo_bench.py suite --out $OUT/dpo_bench.json            # everything, GPU
    python benchmarks/dpo_bench.py dpo --system loris --setting lora --ckpt DIR  # one system
    python benchmarks/dpo_bench.py dpo --system loris --ckpt TINY --seq 64 --allow-cpu  # smoke test

Each child writes its JSON; a failing child is recorded with its error and the suite exits 1 at
the end (after running the rest), naming what failed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from _suite import TARGETS, Suite, checkpoint, hf_step_timer, loris_step_timer, peak_gib, run_child

SETTINGS = {"lora": dict(shape="1b", qlora=False), "qlora": dict(shape="8b", qlora=True)}


def rows(n: int, seq: int, seed: int = 0) -> list[dict]:
    """Text pairs of exactly ``seq`` tokens with the synthetic one-byte-per-token tokenizer."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    prompt_len = seq // 2
    answer_len = seq - prompt_len - 1  # + EOS

    def text(k: int) -> str:
        return "".join(rng.choice(letters) for _ in range(k))

    return [
        {"prompt": text(prompt_len), "chosen": text(answer_len), "rejected": text(answer_len)}
        for _ in range(n)
    ]


def _summary(times: list[float], res: dict, pairs: int) -> None:
    res["step_s"] = [round(t, 3) for t in times]
    steady = times[1:] or times
    res["mean_step_s_after_first"] = sum(steady) / len(steady)
    res["pairs_per_s"] = pairs / res["mean_step_s_after_first"]
    res["peak_gib"] = peak_gib()


def dpo_loris(args, res):
    import torch

    from loris import DPOConfig, DPOTrainer, FastLanguageModel

    qlora = SETTINGS[args.setting]["qlora"]
    model, tok = FastLanguageModel.from_pretrained(
        args.ckpt, load_in_4bit=qlora, dtype=torch.bfloat16, max_seq_length=args.seq
    )
    mode = {"true": True, "false": False}.get(args.checkpointing, args.checkpointing)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, target_modules=TARGETS, use_gradient_checkpointing=mode
    )
    times: list[float] = []
    cfg = DPOConfig(output_dir=args.workdir + "/loris", per_device_train_batch_size=args.pairs,
                    max_steps=args.steps, learning_rate=5e-6, beta=0.1, loss_type="sigmoid",
                    max_length=args.seq, logging_steps=1, save_strategy="no", optim="adamw_torch",
                    bf16=torch.cuda.is_available(), seed=42, disable_tqdm=True)  # fmt: skip
    trainer = DPOTrainer(model, args=cfg, train_dataset=rows(args.pairs * args.steps, args.seq),
                         processing_class=tok, callbacks=[loris_step_timer(times, reset_peak=True)])  # fmt: skip
    trainer.train()
    _summary(times, res, args.pairs)
    res["log_tail"] = trainer.state.log_history[-1]


def dpo_peer(args, res):
    if args.system == "unsloth":
        from unsloth import FastLanguageModel, PatchDPOTrainer  # first: it patches transformers / TRL

        PatchDPOTrainer()
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    qlora = SETTINGS[args.setting]["qlora"]
    kw = {}
    if args.system == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(
            args.ckpt, max_seq_length=args.seq, dtype=torch.bfloat16, load_in_4bit=qlora,
            load_in_16bit=not qlora, local_files_only=True,
        )  # fmt: skip
        model = FastLanguageModel.get_peft_model(
            model, r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, bias="none",
            use_gradient_checkpointing="unsloth", random_state=42, max_seq_length=args.seq,
        )  # fmt: skip
    else:
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if args.system == "trl_liger":
            from liger_kernel.transformers import apply_liger_kernel_to_llama

            # the layer kernels; TRL's DPO keeps its own fused LM head (Liger's would replace it)
            apply_liger_kernel_to_llama(fused_linear_cross_entropy=False)
        load = dict(dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0})
        if qlora:
            from transformers import BitsAndBytesConfig

            load["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(args.ckpt, **load)
        tok = AutoTokenizer.from_pretrained(args.ckpt)
        kw["peft_config"] = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                       task_type="CAUSAL_LM")  # fmt: skip
    times: list[float] = []
    cfg = DPOConfig(output_dir=args.workdir + "/" + args.system, per_device_train_batch_size=args.pairs,
                    max_steps=args.steps, learning_rate=5e-6, beta=0.1, loss_type="sigmoid",
                    max_length=args.seq, logging_steps=1, save_strategy="no", optim="adamw_torch",
                    bf16=True, gradient_checkpointing=args.system != "unsloth", report_to="none",
                    seed=42)  # fmt: skip
    trainer = DPOTrainer(model=model, args=cfg, processing_class=tok, callbacks=[hf_step_timer(times, reset_peak=True)],
                         train_dataset=Dataset.from_list(rows(args.pairs * args.steps, args.seq)), **kw)  # fmt: skip
    trainer.train()
    _summary(times, res, args.pairs)


def child(args) -> int:
    res = {"setting": args.setting, "system": args.system, "pairs": args.pairs, "seq": args.seq}
    run = dpo_loris if args.system == "loris" else dpo_peer
    return run_child(res, lambda: run(args, res), args.out, allow_cpu=args.allow_cpu)


def suite(args) -> int:
    runs = Suite(str(Path(__file__).resolve()), args.out, args.workdir, args.timeout)
    for setting in args.settings:
        ckpt = checkpoint(runs.work, SETTINGS[setting]["shape"])
        for system in args.systems:
            runs.run(f"{system}_{setting}", ["dpo", "--system", system, "--setting", setting, "--ckpt", str(ckpt),
                                             "--steps", str(args.steps), "--workdir", str(runs.work)])  # fmt: skip
        base = runs.results["runs"].get(f"trl_{setting}", {})
        mine = runs.results["runs"].get(f"loris_{setting}", {})
        if base.get("ok") and mine.get("ok"):
            runs.results[f"loris_vs_trl_{setting}"] = mine["pairs_per_s"] / base["pairs_per_s"]
    return runs.finish()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dpo")
    p.add_argument("--system", required=True, choices=["loris", "trl", "trl_liger", "unsloth"])
    p.add_argument("--setting", default="lora", choices=list(SETTINGS))
    p.add_argument("--ckpt", required=True)
    p.add_argument("--workdir", default="/tmp/dpo_bench")
    p.add_argument("--out")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument(
        "--checkpointing",
        default="unsloth",
        help="loris' use_gradient_checkpointing: unsloth, offload, auto, true, false",
    )
    p.add_argument("--allow-cpu", action="store_true", help="smoke-test the loris side without a GPU")
    s = sub.add_parser("suite")
    s.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "dpo_bench.json"))
    s.add_argument("--workdir", default="/tmp/dpo_bench")
    s.add_argument("--steps", type=int, default=6)
    s.add_argument("--timeout", type=float, default=900)
    s.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    s.add_argument("--systems", nargs="+", default=["loris", "trl", "trl_liger", "unsloth"])
    args = ap.parse_args(argv)
    if args.cmd == "suite":
        return suite(args)
    return child(args)


if __name__ == "__main__":
    sys.exit(main())
