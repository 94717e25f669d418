"""The causal-LM head step shared by loris' decoder and the generic path: labels → loss, hidden → logits.

Both models end their forward the way transformers' causal LMs do (labels shifted inside, -100
ignored, ``num_items_in_batch`` for exact gradient accumulation, logits skipped while training with
labels). Only how the loss and the logits are computed from the hidden states differs between them,
so each passes its own two functions and the rest lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LMLoss = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]
"""``(hidden (tokens, H), shifted labels (tokens,), reduction "mean"|"sum") -> loss``."""


@dataclass
class CausalLMOutput:
    """What transformers' `CausalLMOutputWithPast` carries that callers use."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)


def softcap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-style final soft-capping, ``cap · tanh(logits / cap)``; ``logits`` as they are if no cap."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def shifted_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_loss: LMLoss,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token loss of ``hidden`` (batch, seq, H) against ``labels`` (batch, seq), shifted here:
    the mean over non-ignored tokens, or their sum divided by ``num_items_in_batch`` when given."""
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1).to(hidden.device)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if num_items_in_batch is None:
        return lm_loss(flat, shifted, "mean")
    return lm_loss(flat, shifted, "sum") / num_items_in_batch


def causal_lm_output(
    hidden: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    lm_loss: LMLoss,
    logits_from_hidden: Callable[[torch.Tensor], torch.Tensor],
    training: bool,
    num_items_in_batch: int | torch.Tensor | None = None,
    return_logits: bool | None = None,
    logits_to_keep: int = 0,
) -> CausalLMOutput:
    """The loss (when ``labels`` are given) and the logits (unless training with labels, where the
    chunked loss never materialises them; ``return_logits`` overrides) of final hidden states."""
    loss = None if labels is None else shifted_lm_loss(hidden, labels, lm_loss, num_items_in_batch)
    if return_logits is None:
        return_logits = labels is None or not training
    logits = None
    if return_logits:
        logits = logits_from_hidden(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
    return CausalLMOutput(loss=loss, logits=logits)
