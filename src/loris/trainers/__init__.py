"""Training loops: the shared `Trainer` and supervised fine-tuning (`SFTTrainer`, `SFTConfig`).

Importing this package only defines names; nothing runs.
"""

from __future__ import annotations

from loris.trainers.config import TrainingConfig
from loris.trainers.loop import (
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingDivergedError,
    TrainOutput,
)

__all__ = [
    "TrainingConfig",
    "Trainer",
    "TrainerCallback",
    "TrainerState",
    "TrainingDivergedError",
    "TrainOutput",
]
