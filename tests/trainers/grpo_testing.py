"""Shared GRPO test settings: a tiny, fast configuration that tests override field by field."""

from __future__ import annotations

from loris import GRPOConfig


def grpo_args(tmp_path, **kw) -> GRPOConfig:
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
    )
    return GRPOConfig(**{**base, **kw})
