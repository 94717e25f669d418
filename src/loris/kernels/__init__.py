"""Fused ops: one file per op, each holding a Triton kernel, its autograd Function and a plain reference.

Each op's public function picks the Triton path for CUDA tensors (unless ``LORIS_DISABLE_KERNELS=1``)
and the reference path everywhere else, so CPU runs and tests need no GPU.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def kernels_disabled() -> bool:
    return os.environ.get("LORIS_DISABLE_KERNELS", "0").lower() in ("1", "true", "yes")


def use_triton(x: torch.Tensor) -> bool:
    """Whether the Triton path should run for a tensor living where ``x`` lives."""
    return x.is_cuda and not kernels_disabled() and triton_available()
