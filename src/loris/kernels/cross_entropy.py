"""Causal-LM loss from hidden states: ``CE(softcap(h @ W^T), labels)``.

The fused path never materialises the full (tokens x vocab) logits; the reference does, and is
the definition the fused path must match: fp32 logits, optional tanh soft-capping
(``cap * tanh(z / cap)``, Gemma 2), ``ignore_index`` tokens excluded, mean over the counted tokens
(or a sum, when the caller normalises across gradient-accumulation steps itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loris.kernels import use_triton


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """hidden: (N, H), weight: (V, H), labels: (N,) already shifted."""
    logits = (hidden @ weight.t()).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Loss of a linear head without keeping the logits; Triton on CUDA, the reference elsewhere."""
    if use_triton(hidden):
        pass  # the fused chunked path lands here (kernel + autograd Function in this file)
    return linear_cross_entropy_reference(
        hidden, weight, labels, ignore_index=ignore_index, softcap=softcap, reduction=reduction
    )
