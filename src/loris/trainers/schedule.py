"""Learning-rate schedules as multipliers of the base rate, one pure function of the step.

The optimizer step ``s`` (0-based) runs with ``base_lr * factor(s)``; warmup rises linearly from 0
at step 0, as in transformers, so the first step of a warmed-up run does not move the weights.
Being a pure function of the step is what makes resuming exact: the restored step is the only state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def lr_factor(
    kind: str,
    total_steps: int,
    warmup_steps: int,
    *,
    min_lr_rate: float = 0.0,
    num_cycles: float = 0.5,
) -> Callable[[int], float]:
    """``step -> multiplier`` for ``kind`` in linear / cosine / constant / constant_with_warmup /
    cosine_with_min_lr (the cosine decays to ``min_lr_rate`` instead of 0)."""

    def warm(step: int) -> float | None:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return None

    def decay_progress(step: int) -> float:
        return (step - warmup_steps) / max(1, total_steps - warmup_steps)

    if kind == "constant":
        return lambda step: 1.0
    if kind == "constant_with_warmup":
        return lambda step: w if (w := warm(step)) is not None else 1.0
    if kind == "linear":

        def linear(step: int) -> float:
            if (w := warm(step)) is not None:
                return w
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

        return linear
    if kind in ("cosine", "cosine_with_min_lr"):
        floor = min_lr_rate if kind == "cosine_with_min_lr" else 0.0

        def cosine(step: int) -> float:
            if (w := warm(step)) is not None:
                return w
            shape = 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * decay_progress(step)))
            return max(0.0, floor + (1.0 - floor) * shape)

        return cosine
    raise ValueError(f"Unknown lr_scheduler_type {kind!r}.")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    kwargs: dict[str, Any] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over every parameter group (each keeps its own base rate, e.g. the embeddings')."""
    kw = dict(kwargs or {})
    if kind == "cosine_with_min_lr":
        rate = kw.pop("min_lr_rate", None)
        if rate is None:
            rate = kw.pop("min_lr") / base_lr if base_lr else 0.0
        kw["min_lr_rate"] = rate
    unknown = set(kw) - {"min_lr_rate", "num_cycles"}
    if unknown:
        raise ValueError(f"lr_scheduler_kwargs {sorted(unknown)} are not understood by {kind!r}.")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(kind, total_steps, warmup_steps, **kw))
