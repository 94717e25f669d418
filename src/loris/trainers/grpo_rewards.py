"""Calling reward functions the way TRL does, with errors that name the function at fault."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

RewardFunc = Callable[..., Sequence[float | None]]


def reward_name(func: RewardFunc) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def score(
    funcs: Sequence[RewardFunc],
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    trainer_state: Any = None,
) -> torch.Tensor:
    """(rows, functions) rewards; None becomes NaN. Every extra dataset column is passed by name."""
    out = torch.empty(len(completions), len(funcs), dtype=torch.float32)
    for j, func in enumerate(funcs):
        name = reward_name(func)
        values = func(
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids,
            trainer_state=trainer_state,
            **columns,
        )
        try:
            values = list(values)
        except TypeError:
            raise TypeError(
                f"reward function {name!r} returned {type(values).__name__}; it must return a list with one "
                f"float (or None) per completion ({len(completions)} here)"
            ) from None
        if len(values) != len(completions):
            raise ValueError(
                f"reward function {name!r} returned {len(values)} rewards for {len(completions)} completions; "
                "return exactly one float (or None to skip) per completion"
            )
        for i, v in enumerate(values):
            if v is None:
                out[i, j] = math.nan
                continue
            if not isinstance(v, numbers.Real) and not (torch.is_tensor(v) and v.numel() == 1):
                raise TypeError(
                    f"reward function {name!r} returned {v!r} ({type(v).__name__}) for completion {i}; "
                    "rewards must be numbers (or None to skip)"
                )
            v = float(v)
            if math.isnan(v) or math.isinf(v):
                raise ValueError(
                    f"reward function {name!r} returned {v} for completion {i}; use None to skip"
                )
            out[i, j] = v
    return out
