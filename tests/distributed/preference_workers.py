"""What each spawned rank runs in tests/distributed/test_preference.py (top-level, so spawn can pickle it).

Kept apart from workers.py (SFT/GRPO/FSDP workers); writes ``out/rank<r>.pt`` like them."""

from __future__ import annotations

from pathlib import Path

import torch
from trainer_testing import Record
from workers import lora_model, trainable


def preference_train(folder: str, method: str, rows: list, out: str, settings: dict) -> None:
    """Train DPO or KTO; save the per-step losses, the logged metrics and this rank's final adapters."""
    from loris import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
    from loris.distributed import rank

    config_cls, trainer_cls = {"dpo": (DPOConfig, DPOTrainer), "kto": (KTOConfig, KTOTrainer)}[method]
    settings = dict(settings)
    trained_adapter = settings.pop("trained_adapter", False)
    model, tok = lora_model(folder)
    if trained_adapter:  # continued training: the reference is a frozen copy of this adapter
        from preference_testing import randomize_adapter

        randomize_adapter(model, seed=7)
    rec = Record()
    base = dict(output_dir=out, logging_steps=1, save_strategy="no", disable_tqdm=True, optim="sgd",
                learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant", seed=3)  # fmt: skip
    trainer = trainer_cls(model, args=config_cls(**{**base, **settings}), train_dataset=rows,
                          processing_class=tok, callbacks=[rec])  # fmt: skip
    trainer.train()
    steps = {k: {"loss": v["loss"], "grad_norm": v["grad_norm"]} for k, v in rec.steps.items()}
    logs = [e for e in trainer.state.log_history if "loss" in e]
    result = {"steps": steps, "logs": logs, "weights": trainable(model), "mode": trainer._ranks.mode,
              "reference": trainer.reference.kind if trainer.reference is not None else None}  # fmt: skip
    torch.save(result, Path(out) / f"rank{rank()}.pt")
