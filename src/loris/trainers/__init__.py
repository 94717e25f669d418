"""Training loops: the shared `Trainer` and supervised fine-tuning (`SFTTrainer`, `SFTConfig`, and
Unsloth's aliases `UnslothTrainer`, `UnslothTrainingArguments`).

Importing this package only defines names; nothing runs.
"""

from __future__ import annotations

from loris.data.sft import SFTCollator
from loris.trainers.config import TrainingConfig
from loris.trainers.loop import (
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingDivergedError,
    TrainOutput,
)
from loris.trainers.sft import SFTConfig, SFTTrainer, UnslothTrainer, UnslothTrainingArguments

__all__ = [
    "SFTCollator",
    "SFTConfig",
    "SFTTrainer",
    "TrainingConfig",
    "Trainer",
    "TrainerCallback",
    "TrainerState",
    "TrainingDivergedError",
    "TrainOutput",
    "UnslothTrainer",
    "UnslothTrainingArguments",
]
