"""Rotary position embedding applied to q and k (rotate-half convention, as transformers uses).

``cos``/``sin`` are precomputed per position by :mod:`loris.models.rope` for every rope-scaling
variant, shaped ``(batch, seq, rotary_dim)``. When ``rotary_dim < head_dim`` (partial rotary, e.g.
Phi-4-mini) only the leading ``rotary_dim`` channels rotate.
"""

from __future__ import annotations

import torch

from loris.kernels import use_triton


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_one(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: (B, Hq, L, D), k: (B, Hk, L, D), cos/sin: (B, L, rotary_dim) in q's dtype."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return _rope_one(q, cos, sin), _rope_one(k, cos, sin)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k; Triton on CUDA, the reference elsewhere."""
    if use_triton(q):
        pass  # the Triton path lands here (kernel + autograd Function in this file)
    return apply_rope_reference(q, k, cos, sin)
