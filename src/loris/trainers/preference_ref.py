"""Per-token log-probs of preference batches, for the policy and for the reference policy.

The policy path is the memory path: the decoder runs once on the whole batch (chosen and rejected
rows together) to its final hidden states, then only the positions that predict a scored token go
through the LM head, in chunks, with `grpo_loss.token_logps` (the same chunked, checkpointed code
GRPO uses), so the (rows × length × vocab) logits never exist.

The reference policy, as TRL chooses it when ``ref_model`` is None:
- a fresh LoRA adapter (every ``lora_B`` zero): the same model with its adapters switched off;
- an adapter that is already trained (continued training), or trainable embeddings: a frozen copy
  of the starting trainable weights, swapped in for the reference pass and back out after it;
- full fine-tuning: a frozen copy of the starting model.
A given ``ref_model`` (a loris model, or a transformers causal LM) is used as it is.
The reference pass always runs under ``torch.no_grad()`` and before the policy's forward, so a
swapped-in copy never changes a weight that the policy's autograd graph has saved.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from loris.data.preference import flatten_rows
from loris.lora import adapters_disabled, lora_modules
from loris.trainers.grpo_loss import token_logps


def scored_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor,
    *,
    chunk_size: int = 128,
    padding_free: bool = False,
) -> torch.Tensor:
    """(rows, length - 1) log-probs of token t+1 given tokens ≤ t where ``score_mask[:, t+1]`` is set,
    0 elsewhere; computed from a loris model's hidden states, the LM head on scored positions only.

    ``padding_free``: the decoder runs on `flatten_rows` of the batch (one row of the real tokens,
    position ids restarting per sequence, attention kept inside each sequence) instead of the padded
    rows; the scored positions are picked from that row in the same order, so the result is the same
    (rows, length - 1) tensor, only no pad token went through the model."""
    sel = score_mask[:, 1:].bool()
    if not padding_free:
        positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        h = model.hidden_states(input_ids, attention_mask, positions)
        hidden, targets = h[:, :-1][sel], input_ids[:, 1:][sel]
    else:
        real = attention_mask.bool()
        sel = sel & real[:, 1:] & real[:, :-1]  # a scored token and the one predicting it are real
        ids, positions = flatten_rows(input_ids, attention_mask)
        h = model.hidden_states(ids, None, positions)[0]
        # flattened token j predicts flattened token j + 1 exactly where sel is set at j's place
        predicts = F.pad(sel, (0, 1))[real][:-1]
        hidden, targets = h[:-1][predicts], ids[0, 1:][predicts]
    lp, _ = token_logps(model, hidden, targets, chunk_size=chunk_size, with_entropy=False)
    out = torch.zeros(sel.shape, dtype=lp.dtype, device=lp.device)
    return out.masked_scatter(sel, lp)


def _is_loris(model: nn.Module) -> bool:
    return hasattr(model, "hidden_states") and hasattr(model, "logits_from_hidden")


@torch.no_grad()
def transformers_token_logps(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor
) -> torch.Tensor:
    """The same log-probs from a transformers causal LM (full logits, one row at a time)."""
    rows = []
    for i in range(input_ids.shape[0]):
        logits = model(input_ids=input_ids[i : i + 1], attention_mask=attention_mask[i : i + 1]).logits
        logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        rows.append(logp.gather(-1, input_ids[i, 1:, None]).squeeze(-1))
    return torch.stack(rows) * score_mask[:, 1:].to(torch.float32)


@contextlib.contextmanager
def _swapped(params: list[nn.Parameter], values: list[torch.Tensor]) -> Iterator[None]:
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


class ReferencePolicy:
    """Computes reference log-probs for a policy model (see the module docstring for the choice)."""

    def __init__(self, model: nn.Module, ref_model: nn.Module | None = None, *, needed: bool = True):
        self.model, self.ref_model = model, ref_model
        self.kind = "model"
        self._frozen: list[nn.Parameter] = []
        self._values: list[torch.Tensor] = []
        if ref_model is not None:
            if ref_model is model:
                raise ValueError(
                    "model and ref_model are the same object: leave ref_model=None to use the starting "
                    "policy as the reference (the base with adapters off, or a frozen copy of the adapter)."
                )
            for p in ref_model.parameters():
                p.requires_grad_(False)
            return
        trainable = [p for p in model.parameters() if p.requires_grad]
        loras = [m for _, m in lora_modules(model)]
        lora_params = {id(p) for m in loras for p in (m.lora_A, m.lora_B)}
        if loras:
            trained = any(bool(m.lora_B.detach().any()) for m in loras)
            extra = any(id(p) not in lora_params for p in trainable)
            if not trained and not extra:
                self.kind = "base"
            else:
                self.kind = "frozen_adapter"
                self._frozen = trainable
                self._values = [p.detach().clone() for p in trainable]
        elif needed:  # full fine-tuning: TRL loads a second copy of the model; so do we
            self.kind = "model"
            self.ref_model = copy.deepcopy(model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        else:  # precomputed before any step: the model itself is still the starting policy
            self.kind = "self"

    @contextlib.contextmanager
    def _as_reference(self) -> Iterator[nn.Module]:
        if self.kind == "base":
            with adapters_disabled(self.model):
                yield self.model
        elif self.kind == "frozen_adapter":
            with _swapped(self._frozen, self._values):
                yield self.model
        elif self.kind == "self":
            yield self.model
        else:
            yield self.ref_model

    @torch.no_grad()
    def token_logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        score_mask: torch.Tensor,
        chunk_size: int = 128,
        padding_free: bool = False,
    ) -> torch.Tensor:
        """Reference per-token log-probs, as `scored_token_logps` returns them (a transformers
        reference runs row by row, so it never sees another row's padding anyway)."""
        with self._as_reference() as ref:
            was = ref.training
            ref.eval()  # no dropout in the reference, as TRL's disable_dropout
            try:
                if _is_loris(ref):
                    return scored_token_logps(
                        ref,
                        input_ids,
                        attention_mask,
                        score_mask,
                        chunk_size=chunk_size,
                        padding_free=padding_free,
                    )
                device = next(ref.parameters()).device
                out = transformers_token_logps(
                    ref, input_ids.to(device), attention_mask.to(device), score_mask.to(device)
                )
                return out.to(input_ids.device)
            finally:
                ref.train(was)
