#!/usr/bin/env python3
"""Many-GPU smoke test under torchrun: DDP LoRA, DDP QLoRA and FSDP2 full fine-tuning steps with
loris' own trainer, on a random-initialised small Llama shape (no download), bf16.

    torchrun --nproc-per-node 1 benchmarks/distributed_smoke.py --out smoke.json   # one GPU (NCCL, world 1)
    torchrun --nproc-per-node 8 benchmarks/distributed_smoke.py --out smoke.json   # every GPU of a host

For each setting it records the per-step loss (equal on every rank: the loop averages over ranks),
tokens/s over all ranks, peak GPU memory on rank 0, and for FSDP2 the memory the sharded weights
take on one card right after sharding (a 1/world share of the full-precision model, plus the
replicated root), then exporting merged_16bit straight from the sharded model (every rank gathers,
rank 0 writes: its seconds and rank 0's peak GPU memory). One process runs the settings one after another; on an H100 the whole script takes
well under 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

SHAPE = dict(  # a ~0.3B Llama: big enough for real kernels, small enough to build in seconds
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=12,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def build_checkpoint(folder: Path) -> None:
    """Rank 0 writes a random Llama of SHAPE (bf16) with a GPT-2 sized byte tokenizer stand-in."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPE, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<pad>": 0,
        "<s>": 1,
        "</s>": 2,
        "<unk>": 3,
        **{f"w{i}": i for i in range(4, SHAPE["vocab_size"])},
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def rows(n: int, length: int) -> list[dict]:
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(4, SHAPE["vocab_size"], (n, length), generator=g)
    return [{"input_ids": r.tolist()} for r in ids]


class StepLog:
    def __init__(self):
        from loris.trainers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, state, logs):
                outer.steps.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()}})

        self.steps: list[dict] = []
        self.callback = CB()


def run_setting(
    name: str, folder: Path, args: argparse.Namespace, *, lora: bool, four_bit: bool, fsdp: str
) -> dict:
    from loris import FastLanguageModel, SFTConfig, SFTTrainer
    from loris.distributed import is_main_process, world_size

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model, tok = FastLanguageModel.from_pretrained(
        str(folder),
        max_seq_length=args.seq,
        dtype=torch.bfloat16,
        load_in_4bit=four_bit,
        full_finetuning=not lora,
    )
    if lora:
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, use_gradient_checkpointing=True)
    log = StepLog()
    cfg = SFTConfig(
        output_dir=str(folder / f"out-{name}"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=2,
        max_steps=args.steps,
        learning_rate=2e-4 if lora else 2e-5,
        logging_steps=1,
        save_strategy="no",
        bf16=True,
        optim="adamw_torch",
        disable_tqdm=True,
        fsdp=fsdp,
        gradient_checkpointing=not lora,
    )
    trainer = SFTTrainer(model, cfg, train_dataset=rows(args.batch * 2 * world_size() * args.steps, args.seq),
                         processing_class=tok, callbacks=[log.callback])  # fmt: skip
    t0 = time.perf_counter()
    out = trainer.train()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {
        "setting": name,
        "mode": trainer._ranks.mode,
        "world_size": world_size(),
        "steps": log.steps,
        "train_seconds": seconds,
        "tokens_per_second_all_ranks": out.metrics["train_samples_per_second"] * args.seq,
        "peak_memory_gib_rank0": torch.cuda.max_memory_allocated() / 2**30,
        "loss_finite": all(torch.isfinite(torch.tensor(s["loss"])) for s in log.steps),
    }
    if fsdp:
        local = sum(getattr(p, "_local_tensor", p).numel() * p.element_size() for p in model.parameters())
        result["sharded_param_gib_rank0"] = local / 2**30
        result.update(export_merged(model, tok, folder / f"out-{name}" / "merged"))
    if is_main_process():
        print(json.dumps({k: v for k, v in result.items() if k != "steps"}), flush=True)
    del trainer, model
    return result


def export_merged(model, tok, out: Path) -> dict:
    """``save_pretrained_merged`` straight from the sharded model (every rank gathers, rank 0 writes):
    its time, rank 0's peak GPU memory while gathering, and the bytes written."""
    from loris.distributed import is_main_process

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        path = Path(model.save_pretrained_merged(str(out), tok, save_method="merged_16bit"))
    except Exception as exc:  # record it: the training numbers above still count
        return {"export_error": f"{type(exc).__name__}: {exc}"}
    written = sum(p.stat().st_size for p in path.glob("*.safetensors")) if is_main_process() else None
    return {
        "export_seconds": time.perf_counter() - t0,
        "export_peak_memory_gib_rank0": torch.cuda.max_memory_allocated() / 2**30,
        "export_safetensors_bytes": written,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="distributed_smoke.json")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument(
        "--only", nargs="*", default=None, help="settings to run (ddp_lora ddp_qlora fsdp2_full)"
    )
    args = parser.parse_args()
    if "WORLD_SIZE" not in os.environ:
        raise SystemExit("run under torchrun: torchrun --nproc-per-node N benchmarks/distributed_smoke.py")

    from loris.distributed import barrier, init, is_main_process, on_main_process

    info = init()
    if not torch.distributed.is_initialized():  # torchrun with one process: open a group of 1 (NCCL)
        torch.distributed.init_process_group("nccl", device_id=torch.device("cuda", info.local_rank))
        torch.cuda.set_device(info.local_rank)
    root = Path(tempfile.gettempdir()) / "loris-distributed-smoke"
    folder = root / "model"
    if not (folder / "config.json").is_file():
        on_main_process(build_checkpoint)(folder)
    barrier()
    settings = {
        "ddp_lora": dict(lora=True, four_bit=False, fsdp=""),
        "ddp_qlora": dict(lora=True, four_bit=True, fsdp=""),
        "fsdp2_full": dict(lora=False, four_bit=False, fsdp="full_shard"),
    }
    results, t0 = [], time.perf_counter()
    for name, kw in settings.items():
        if args.only and name not in args.only:
            continue
        try:
            results.append(run_setting(name, root, args, **kw))
        except Exception as exc:  # record and go on: one broken setting must not hide the others
            results.append({"setting": name, "error": f"{type(exc).__name__}: {exc}"})
            if is_main_process():
                print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
    if is_main_process():
        report = {
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "seconds": time.perf_counter() - t0,
            "shape": SHAPE,
            "batch": args.batch,
            "seq": args.seq,
            "results": results,
        }
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
