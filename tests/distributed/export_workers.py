"""What each spawned rank runs for the FSDP2 export tests (top-level functions, so spawn can pickle them)."""

from __future__ import annotations

from pathlib import Path

import torch
from workers import full_model, lora_model, trainable


def train_and_export(
    folder: str, rows: list, out: str, settings: dict, methods: list[str], kind: str = "full"
) -> None:
    """Full fine-tune (or LoRA: ``kind="lora"``) with SFTTrainer, then `export` once per method on every rank
    (as a user script under torchrun does); saves the returned paths and the trained weights."""
    from loris import SFTConfig, SFTTrainer
    from loris.distributed import rank

    model, tok = full_model(folder) if kind == "full" else lora_model(folder)
    base = dict(output_dir=out, logging_steps=1, save_strategy="no", disable_tqdm=True, optim="sgd",
                max_grad_norm=0.0, lr_scheduler_type="constant")  # fmt: skip
    trainer = SFTTrainer(model, SFTConfig(**{**base, **settings}), train_dataset=rows, processing_class=tok)
    trainer.train()
    paths = {m: str(export(model, tok, m, Path(out) / m)) for m in methods}
    result = {"paths": paths, "weights": trainable(model), "mode": trainer._ranks.mode}
    torch.save(result, Path(out) / f"rank{rank()}.pt")


def export(model, tok, method: str, folder: Path):
    """``save_pretrained_merged``; "adapter": ``save_pretrained``; "gguf" writes q8_0 without a tokenizer (the tiny WordLevel one has no
    GGUF form), through the same pipeline as ``save_pretrained_gguf``."""
    if method == "gguf":
        from loris.export import pipeline

        return pipeline.save(model, None, "gguf", folder, quantization_method="q8_0")[0].path
    if method == "adapter":
        return model.save_pretrained(str(folder), tok)
    return model.save_pretrained_merged(str(folder), tok, save_method=method)


def qlora_export_error(folder: str, out: str) -> None:
    """Shard a QLoRA model with FSDP2 and ask for its adapter: every rank gets the same error."""
    from loris.distributed import env, rank
    from loris.distributed.wrap import ShardSettings, shard_fsdp2

    env.init()
    model, tok = lora_model(folder, load_in_4bit=True)
    shard_fsdp2(model, ShardSettings())
    try:
        model.save_pretrained(str(Path(out) / "adapter"), tok)
        message = "no error"
    except ValueError as exc:
        message = str(exc)
    Path(out, f"rank{rank()}.txt").write_text(message)


def export_from_rank0_alone(folder: str, out: str) -> None:
    """Shard a full model, then export it from inside an on_main_process function (rank 0 alone):
    rank 0 must refuse at once rather than wait for a gather the other rank never joins."""
    from loris.distributed import env, rank
    from loris.distributed.env import on_main_process
    from loris.distributed.wrap import ShardSettings, shard_fsdp2

    env.init(timeout_s=60)
    model, tok = full_model(folder)
    shard_fsdp2(model, ShardSettings())
    try:
        on_main_process(lambda: model.save_pretrained_merged(str(Path(out) / "m"), tok))()
        message = "no error"
    except (ValueError, env.RankFailure) as exc:
        message = f"{type(exc).__name__}: {exc}"
    Path(out, f"rank{rank()}.txt").write_text(message)
