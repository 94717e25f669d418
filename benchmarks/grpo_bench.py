"""GRPO step time/memory and batched decode throughput: TRL, Unsloth and loris, one process each.

Setting (issue 6 / ../shared/bench/GRPO-ANCHORS-2026-11-25-H100.md): a random Llama-3.2-1B-shaped
checkpoint (built by ../shared/bench/anchor_bench.py make-ckpt --shape 1b), bf16, LoRA r=16 alpha 16
on the 7 projections, 1 prompt x 8 completions x 256 tokens per step, beta 0, lr 5e-6, seed 42,
reward -|len(chars) - 200| / 100. Step time = wall time between optimizer steps (cuda synchronised),
generation time measured inside each system; peak = torch.cuda.max_memory_allocated. For loris,
``phase_s`` / ``phase_mean_s_after_first`` split every step into the trainer's own phases
(generation, rewards, prepare, forward_backward, optimizer, between_steps; old_ref_logps when
beta != 0 or num_iterations > 1), as its ``time/<phase>`` log keys report them.

    python benchmarks/grpo_bench.py suite --out $OUT/grpo_bench.json      # everything, on the GPU
    python benchmarks/grpo_bench.py grpo --system loris --ckpt DIR         # one system

Each child writes its JSON; a failing child is recorded with its error and the suite exits 1 at
the end (after running the rest), naming what failed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

from _suite import (
    TARGETS,
    Suite,
    checkpoint,
    hf_step_timer,
    loris_step_timer,
    peak_gib,
    run_child,
    sync,
    timed,
)

WORDS = "alpha beta gamma delta river stone cloud seven blue green count write story about number".split()


def prompts(n: int = 32, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 13))) + "." for _ in range(n)]


def reward_len(completions, **_):
    return [-abs(len(c if isinstance(c, str) else c[-1]["content"]) - 200) / 100.0 for c in completions]


def _summary(step_times, gen_times, res):
    res["step_s"] = [round(t, 3) for t in step_times]
    res["gen_s"] = [round(t, 3) for t in gen_times]
    steady = step_times[1:] or step_times
    res["mean_step_s_after_first"] = sum(steady) / len(steady)
    if gen_times[1:]:
        res["gen_tokens_per_s_after_first"] = (
            8 * res["completion_len"] * len(gen_times[1:]) / sum(gen_times[1:])
        )
    res["peak_gib"] = peak_gib()


# ------------------------------------------------------------------------------------------- loris
def grpo_loris(args, res):
    import torch

    from loris import FastLanguageModel, GRPOConfig, GRPOTrainer

    model, tok = FastLanguageModel.from_pretrained(args.ckpt, load_in_4bit=False, dtype=torch.bfloat16)
    # Offloaded checkpointing, as the Unsloth run uses ("unsloth").
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, use_gradient_checkpointing="unsloth")
    cfg = GRPOConfig(
        output_dir=args.workdir + "/loris",
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=args.completion_len,
        max_steps=args.steps,
        learning_rate=5e-6,
        logging_steps=1,
        save_strategy="no",
        beta=0.0,
        bf16=True,
        seed=42,
        generation_decode=args.decode,
    )
    times, gens = [], []
    trainer = GRPOTrainer(
        model, reward_len, cfg, train_dataset=[{"prompt": p} for p in prompts()], processing_class=tok
    )
    trainer.add_callback(loris_step_timer(times))
    trainer._generate_and_score = timed(trainer._generate_and_score, gens)
    trainer.train()
    _summary(times, gens, res)
    _phases(trainer.state.log_history, res)
    res["log_tail"] = trainer.state.log_history[-1]


def _phases(history, res):
    """Where each step's time went, from the trainer's own ``time/<phase>`` log keys (logging_steps=1:
    one entry per step; GPU-timeline seconds, see loris.trainers.phase_timer)."""
    steps = [
        {k[len("time/") :]: round(v, 4) for k, v in e.items() if k.startswith("time/")}
        for e in history
        if "loss" in e and "eval_loss" not in e
    ]
    res["phase_s"] = steps
    steady = steps[1:] or steps
    if steady and steady[0]:
        names = sorted({k for s in steady for k in s})
        res["phase_mean_s_after_first"] = {
            k: round(sum(s.get(k, 0.0) for s in steady) / len(steady), 4) for k in names
        }


# ----------------------------------------------------------------------------------- TRL / Unsloth
def grpo_peer(args, res):
    if args.system == "unsloth":
        from unsloth import FastLanguageModel  # first: it patches transformers / peft / TRL
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if args.system == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(
            args.ckpt, load_in_4bit=False, load_in_16bit=True, fast_inference=False, max_seq_length=512
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=16,
            lora_alpha=16,
            lora_dropout=0,
            use_gradient_checkpointing="unsloth",
            target_modules=TARGETS,
        )
        peft_config = None
    else:
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            args.ckpt, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
        model.to("cuda")
        tok = AutoTokenizer.from_pretrained(args.ckpt)
        peft_config = LoraConfig(
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
        )
    cfg = GRPOConfig(
        output_dir=args.workdir + "/" + args.system,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=args.completion_len,
        gradient_accumulation_steps=1,
        learning_rate=5e-6,
        max_steps=args.steps,
        logging_steps=1,
        bf16=True,
        report_to="none",
        beta=0.0,
        temperature=1.0,
        gradient_checkpointing=True,
        seed=42,
        save_strategy="no",
    )
    times, gens = [], []
    kw = {"peft_config": peft_config} if peft_config is not None else {}
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_len,
        args=cfg,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts()]),
        processing_class=tok,
        callbacks=[hf_step_timer(times)],
        **kw,
    )
    trainer._generate_single_turn = timed(trainer._generate_single_turn, gens)
    trainer.train()
    _summary(times, gens, res)


# ------------------------------------------------------------------------------------- generation
def gen(args, res):
    """Greedy decode of `batch` random 128-token prompts, 256 new tokens, no EOS (ids only)."""
    import torch

    g = torch.Generator().manual_seed(0)
    if args.system == "loris":
        from loris import FastLanguageModel
        from loris.generation import engine

        model, _ = FastLanguageModel.from_pretrained(args.ckpt, load_in_4bit=False, dtype=torch.bfloat16)
        if args.lora:
            model = FastLanguageModel.get_peft_model(
                model, r=16, lora_alpha=16, use_gradient_checkpointing=False
            )
        vocab = model.config.vocab_size
        opts = engine.EngineOptions(decode=args.decode, merge_lora=args.merge_lora)

        def run(n_new):
            ids = torch.randint(10, vocab - 10, (args.batch, args.plen), generator=g)
            return engine.run(model, ids, max_new_tokens=n_new, options=opts)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            args.ckpt, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
        model.to("cuda").eval()
        model.generation_config.eos_token_id = None
        vocab = model.config.vocab_size

        def run(n_new):
            ids = torch.randint(10, vocab - 10, (args.batch, args.plen), generator=g).cuda()
            return model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                do_sample=False,
            )

    sync()
    t = time.perf_counter()
    run(args.new)  # warm-up (and CUDA-graph capture)
    sync()
    res["first_call_s"] = time.perf_counter() - t
    ttft, full = [], []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        run(1)
        sync()
        ttft.append(time.perf_counter() - t)
    for _ in range(2):
        sync()
        t = time.perf_counter()
        run(args.new)
        sync()
        full.append(time.perf_counter() - t)
    full_s, ttft_s = sorted(full)[len(full) // 2], sorted(ttft)[1]
    res.update(
        batch=args.batch,
        tokens_per_s=args.batch * args.new / full_s,
        decode_tokens_per_s=args.batch * (args.new - 1) / max(full_s - ttft_s, 1e-9),
        ms_per_decode_step=1000 * (full_s - ttft_s) / (args.new - 1),
        ttft_ms=1000 * ttft_s,
        peak_gib=peak_gib(),
    )


# ------------------------------------------------------------------------------------------ driver
def child(args, fn) -> int:
    res = {"kind": args.cmd, "system": args.system, "completion_len": getattr(args, "completion_len", None)}
    return run_child(res, lambda: fn(args, res), args.out)


def suite(args) -> int:
    runs = Suite(str(Path(__file__).resolve()), args.out, args.workdir, args.timeout)
    ckpt = checkpoint(runs.work, "1b")
    common = ["--ckpt", str(ckpt), "--workdir", str(runs.work)]
    plan = {
        "loris_grpo": ["grpo", "--system", "loris", "--steps", str(args.steps), "--decode", "auto"],
        "loris_grpo_eager": ["grpo", "--system", "loris", "--steps", "3", "--decode", "eager"],
        "loris_gen_b8": ["gen", "--system", "loris", "--batch", "8"],
        "loris_gen_b64": ["gen", "--system", "loris", "--batch", "64"],
        "loris_gen_b8_lora_live": ["gen", "--system", "loris", "--batch", "8", "--lora"],
        "loris_gen_b8_lora_merged": ["gen", "--system", "loris", "--batch", "8", "--lora", "--merge-lora"],
        "hf_gen_b64": ["gen", "--system", "hf", "--batch", "64"],
        "trl_grpo": ["grpo", "--system", "trl", "--steps", str(args.steps)],
        "unsloth_grpo": ["grpo", "--system", "unsloth", "--steps", str(args.steps)],
    }
    only = set(args.only or plan)
    for name, cmd in plan.items():
        if name in only:
            runs.run(name, [*cmd, *common])
    return runs.finish()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("grpo", "gen"):
        p = sub.add_parser(name)
        p.add_argument("--system", required=True, choices=["loris", "trl", "unsloth", "hf"])
        p.add_argument("--ckpt", required=True)
        p.add_argument("--workdir", default="/tmp/grpo_bench")
        p.add_argument("--out")
        p.add_argument("--decode", default="auto", choices=["auto", "eager", "static", "cuda_graph"])
        p.add_argument("--steps", type=int, default=4)
        p.add_argument("--completion-len", type=int, default=256)
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--plen", type=int, default=128)
        p.add_argument("--new", type=int, default=256)
        p.add_argument("--lora", action="store_true")
        p.add_argument("--merge-lora", action="store_true")
    s = sub.add_parser("suite")
    s.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "grpo_bench.json"))
    s.add_argument("--workdir", default="/tmp/grpo_bench")
    s.add_argument("--steps", type=int, default=4)
    s.add_argument("--timeout", type=float, default=900)
    s.add_argument("--only", nargs="+", help="run only these entries of the plan")
    args = ap.parse_args(argv)
    if args.cmd == "suite":
        return suite(args)
    if args.cmd == "gen":
        return child(args, gen)
    if args.system == "hf":
        raise SystemExit("grpo --system hf is not a thing: use trl")
    return child(args, grpo_loris if args.system == "loris" else grpo_peer)


if __name__ == "__main__":
    sys.exit(main())
