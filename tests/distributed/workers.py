"""What each spawned rank runs in tests/distributed (top-level functions, so spawn can pickle them).

Every worker writes its results to ``out/rank<r>.pt`` for the test process to compare."""

from __future__ import annotations

from pathlib import Path

import torch


def lora_model(folder: str, gradient_checkpointing: bool | str = False):
    from loris import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(
        folder, load_in_4bit=False, dtype=torch.float32, device_map="cpu"
    )
    model = FastLanguageModel.get_peft_model(
        model, r=8, lora_alpha=16, use_gradient_checkpointing=gradient_checkpointing
    )
    return model, tok


def full_model(folder: str):
    from loris import FastLanguageModel

    return FastLanguageModel.from_pretrained(
        folder, load_in_4bit=False, dtype=torch.float32, device_map="cpu", full_finetuning=True
    )


def trainable(model) -> dict[str, torch.Tensor]:
    """Trainable weights by name, as full plain tensors (FSDP2's DTensors gathered)."""
    from loris.distributed.wrap import local_value

    return {n: local_value(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}


def sft_train(folder: str, rows: list, out: str, kind: str, settings: dict, resume=None) -> None:
    """Train with SFTTrainer; save the per-step logs and the final trainable weights of this rank."""
    from trainer_testing import Record

    from loris import SFTConfig, SFTTrainer
    from loris.distributed import rank

    settings = dict(settings)
    gc = settings.pop("use_gradient_checkpointing", False)
    model, tok = lora_model(folder, gc) if kind == "lora" else full_model(folder)
    rec = Record()
    base = dict(output_dir=out, logging_steps=1, save_strategy="no", disable_tqdm=True, optim="sgd",
                max_grad_norm=0.0, lr_scheduler_type="constant")  # fmt: skip
    trainer = SFTTrainer(model, SFTConfig(**{**base, **settings}), train_dataset=rows, processing_class=tok,
                         callbacks=[rec])  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    steps = {k: {"loss": v["loss"], "grad_norm": v["grad_norm"]} for k, v in rec.steps.items()}
    result = {"steps": steps, "weights": trainable(model), "mode": trainer._ranks.mode}
    torch.save(result, Path(out) / f"rank{rank()}.pt")
