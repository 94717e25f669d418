"""`TrainingConfig`: the shared training settings, with transformers' `TrainingArguments` names.

Field names and meanings follow `transformers.TrainingArguments` so notebooks port unchanged; the
defaults are TRL/transformers' own (batch 8, accumulation 1, lr 5e-5, linear schedule, seed 42,
`adamw_torch_fused`), not Unsloth's `UnslothTrainingArguments` ones (batch 4, accumulation 2,
seed 3407, `adamw_8bit`, weight decay 0.001) — Unsloth's notebooks set all of these explicitly, so
they behave the same here. Fields that only matter to features loris does not have (multi-node
logging, hub pushing from the trainer, ...) are not listed; passing them is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr")
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
)
STRATEGIES = ("no", "steps", "epoch")


@dataclass
class TrainingConfig:
    """Settings for the shared training loop (`loris.trainers.loop.Trainer`).

    Steps are optimizer steps: each gathers ``gradient_accumulation_steps`` micro-batches of
    ``per_device_train_batch_size`` rows. ``warmup_steps`` below 1 and ``warmup_ratio`` are fractions
    of the total steps (rounded up, as transformers does); ``logging_steps``/``save_steps``/
    ``eval_steps`` below 1 likewise. ``bf16``/``fp16`` turn on autocast on CUDA; on CPU training runs
    in the model's dtype. Only ``report_to="none"`` is a real choice: stdout and
    ``output_dir/log.jsonl`` are always written, other integrations are accepted and warned about.
    """

    output_dir: str = "trainer_output"
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    embedding_learning_rate: float | None = None
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict[str, Any] | None = None
    warmup_steps: float = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch_fused"
    logging_steps: float = 500
    logging_first_step: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    eval_strategy: str = "no"
    eval_steps: float | None = None
    seed: int = 42
    data_seed: int | None = None
    bf16: bool = False
    fp16: bool = False
    report_to: str | list[str] = "none"
    run_name: str | None = None
    dataloader_num_workers: int = 0
    dataloader_drop_last: bool = False
    resume_from_checkpoint: bool | str | None = None
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    disable_tqdm: bool = False
    remove_unused_columns: bool = True
    # Several processes (torchrun / accelerate launch; see loris.trainers.parallel): transformers' names.
    fsdp: str | list[str] | bool = ""
    fsdp_config: dict[str, Any] | None = None
    ddp_timeout: int = 1800
    ddp_bucket_cap_mb: int | None = None
    ddp_find_unused_parameters: bool | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        self.output_dir = str(self.output_dir)
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, int) and value >= 1,
                f"{name}={value!r}: must be a whole number >= 1.",
            )
        need(
            self.max_steps == -1 or (isinstance(self.max_steps, int) and self.max_steps > 0),
            f"max_steps={self.max_steps!r}: use a positive number of optimizer steps, or -1 to train "
            "for num_train_epochs.",
        )
        need(
            self.max_steps > 0 or self.num_train_epochs > 0,
            f"num_train_epochs={self.num_train_epochs!r} with max_steps=-1 trains nothing: set one of them.",
        )
        need(self.learning_rate >= 0, f"learning_rate={self.learning_rate!r}: must be >= 0.")
        need(
            self.embedding_learning_rate is None or self.embedding_learning_rate >= 0,
            f"embedding_learning_rate={self.embedding_learning_rate!r}: must be >= 0 (or None to use "
            "learning_rate for the embeddings too).",
        )
        need(
            self.lr_scheduler_type in SCHEDULERS,
            f"lr_scheduler_type={self.lr_scheduler_type!r} is not supported; choose one of {list(SCHEDULERS)}.",
        )
        need(
            self.warmup_steps >= 0,
            f"warmup_steps={self.warmup_steps!r}: must be >= 0 (a step count, or a fraction below 1).",
        )
        need(
            0.0 <= self.warmup_ratio < 1.0,
            f"warmup_ratio={self.warmup_ratio!r}: must be in [0, 1) (a fraction of the total steps).",
        )
        need(
            not (self.warmup_ratio > 0 and self.warmup_steps > 0),
            "Both warmup_steps and warmup_ratio are set: keep one (warmup_steps wins in transformers, "
            "which hides mistakes).",
        )
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay!r}: must be >= 0.")
        need(
            0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1,
            f"adam_beta1={self.adam_beta1!r}, adam_beta2={self.adam_beta2!r}: each must be in [0, 1).",
        )
        need(self.adam_epsilon > 0, f"adam_epsilon={self.adam_epsilon!r}: must be > 0.")
        need(
            self.max_grad_norm >= 0,
            f"max_grad_norm={self.max_grad_norm!r}: must be >= 0 (0 disables clipping).",
        )
        need(
            self.optim in OPTIMIZERS,
            f"optim={self.optim!r} is not supported; choose one of {list(OPTIMIZERS)}.",
        )
        need(self.logging_steps > 0, f"logging_steps={self.logging_steps!r}: must be > 0.")
        need(
            self.save_strategy in STRATEGIES,
            f"save_strategy={self.save_strategy!r}: choose one of {list(STRATEGIES)}.",
        )
        need(self.save_steps > 0, f"save_steps={self.save_steps!r}: must be > 0.")
        need(
            self.save_total_limit is None or self.save_total_limit >= 1,
            f"save_total_limit={self.save_total_limit!r}: keep at least 1 checkpoint, or None for all.",
        )
        need(
            self.eval_strategy in STRATEGIES,
            f"eval_strategy={self.eval_strategy!r}: choose one of {list(STRATEGIES)}.",
        )
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps  # transformers' rule
        need(
            self.eval_steps is None or self.eval_steps > 0,
            f"eval_steps={self.eval_steps!r}: must be > 0.",
        )
        need(
            not (self.bf16 and self.fp16),
            "bf16 and fp16 are both set: choose one mixed-precision type (bf16 where the GPU supports it).",
        )
        need(
            self.dataloader_num_workers >= 0,
            f"dataloader_num_workers={self.dataloader_num_workers!r}: must be >= 0.",
        )
        from loris.trainers.parallel import parse_fsdp

        fsdp = parse_fsdp(self.fsdp, self.fsdp_config)  # errors name a word or key it does not know
        if fsdp is not None and fsdp.activation_checkpointing:
            self.gradient_checkpointing = True
        need(self.ddp_timeout > 0, f"ddp_timeout={self.ddp_timeout!r}: seconds, must be > 0.")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = [r for r in self.report_to if r != "none"]
        if self.lr_scheduler_type == "cosine_with_min_lr":
            kw = self.lr_scheduler_kwargs or {}
            need(
                ("min_lr" in kw) != ("min_lr_rate" in kw),
                "lr_scheduler_type='cosine_with_min_lr' needs exactly one of lr_scheduler_kwargs="
                "{'min_lr': ...} or {'min_lr_rate': ...}.",
            )

    # ----------------------------------------------------------------------------------- derived values
    def total_warmup_steps(self, total_steps: int) -> int:
        """Warmup length in optimizer steps: a count, or a fraction of ``total_steps`` rounded up."""
        if self.warmup_ratio > 0:
            return math.ceil(total_steps * self.warmup_ratio)
        if self.warmup_steps < 1:
            return math.ceil(total_steps * self.warmup_steps)
        return int(self.warmup_steps)

    @staticmethod
    def every(value: float | None, total_steps: int) -> int | None:
        """A ``*_steps`` interval in steps: whole numbers as they are, fractions of ``total_steps``."""
        if value is None:
            return None
        return max(1, math.ceil(total_steps * value)) if value < 1 else int(value)

    # ------------------------------------------------------------------------------------- YAML round trip
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text; also written to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}. Known fields: {sorted(known)}.")
        return cls(**data)

    @classmethod
    def from_yaml(cls, source: str | Path) -> TrainingConfig:
        """Build from a YAML file path or YAML text; unknown keys are an error naming them."""
        import yaml

        text = source
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and Path(source).is_file()
        ):
            text = Path(source).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"Expected a YAML mapping of config fields, got {type(data).__name__}.")
        return cls.from_dict(data)
