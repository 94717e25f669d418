"""GRPO's math: per-token log-probs from hidden states in chunks, advantages, and the clipped loss.

The normalisations follow TRL 1.15's `GRPOTrainer._compute_loss` (per_token_loss is
``-min(r·A, clip(r, 1-ε, 1+ε_high)·A) + β·KL`` with ``r = exp(logp - old_logp)`` and
``KL = exp(ref - logp) - (ref - logp) - 1``; M is the completion mask, G the number of micro-batches
in the optimizer step):

- ``grpo``:    mean over sequences of (Σ_t loss·M / Σ_t M), then / G
- ``bnpo``:    Σ loss·M / Σ M over the micro-batch, then / G
- ``dr_grpo``: Σ loss·M / (rows · max_completion_length), then / G
- ``dapo``:    Σ loss·M / (tokens in the whole generation batch · G / steps_per_generation)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def _chunk_logps(model, h: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    logits = model.logits_from_hidden(h).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return logp, None
    with torch.no_grad():  # H = lse - Σ p·z, the sum as a batched dot product (no (c, vocab) product)
        probs = torch.softmax(logits, dim=-1)
        entropy = lse - torch.bmm(probs[:, None, :], logits[:, :, None]).view(-1)
    return logp, entropy


def token_logps(
    model,
    h: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 128,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies, unless ``with_entropy=False``) of ``targets`` (N,) given the
    final hidden states ``h`` (N, hidden) that predict them.

    The LM head runs on ``chunk_size`` tokens at a time in fp32, and each chunk is recomputed in
    backward (activation checkpointing), so at most one chunk of logits exists at any moment instead
    of tokens × vocab. Callers pick the rows of ``h`` to score first (e.g. completion tokens only).
    """
    logps, ents = [], []
    for start in range(0, h.shape[0], chunk_size):
        hc, tc = h[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and hc.requires_grad:
            lp, en = checkpoint(_chunk_logps, model, hc, tc, temperature, with_entropy, use_reentrant=False)
        else:
            lp, en = _chunk_logps(model, hc, tc, temperature, with_entropy)
        logps.append(lp)
        ents.append(en)
    if not logps:
        empty = h.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(ents) if with_entropy else None)


def completion_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies (rows, completion_len) of the last ``completion_len`` tokens.

    Hidden states come from the model once; `token_logps` applies the LM head in chunks.
    """
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    h = model.hidden_states(input_ids, attention_mask, positions)
    h = h[:, -completion_len - 1 : -1]
    targets = input_ids[:, -completion_len:]
    rows = h.shape[0]
    lp, en = token_logps(
        model,
        h.reshape(-1, h.shape[-1]),
        targets.reshape(-1),
        temperature=temperature,
        chunk_size=chunk_size,
    )
    return lp.view(rows, -1), en.view(rows, -1)


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaN (NaN with fewer than two values), as TRL."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    var = torch.where(count > 1, var, torch.full_like(var, float("nan")))
    return var.sqrt().squeeze(dim)


def group_advantages(
    rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int, scale_rewards: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages, summed rewards, std used) for rows grouped ``num_generations`` at a time.

    NaN rewards (a function returned None) are skipped in the sum; a row every function skipped
    is left out of its group's mean and std and gets advantage 0.
    """
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights[None]).nansum(dim=1)
    rewards[unscorable] = float("nan")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0), rewards, std


@dataclass
class LossSettings:
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    max_completion_length: int = 256
    grad_accum: int = 1  # micro-batches in this optimizer step
    steps_per_generation: int = 1
    micro_batch_tokens: float | None = None  # bnpo's count when ranks share the micro-batch (grpo_ranks.py)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    s: LossSettings,
    generation_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch loss (already divided for accumulation) and its metrics; see module doc.
    ``generation_tokens``: masked completion tokens in the whole generation batch (dapo only)."""
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    adv = advantages[:, None]
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - s.epsilon, 1 + s.epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if s.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference log-probs")
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + s.beta * kl
    masked = per_token * mask
    if s.loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / s.grad_accum
    elif s.loss_type == "bnpo":
        tokens = (
            mask.sum().clamp(min=1.0) if s.micro_batch_tokens is None else max(s.micro_batch_tokens, 1e-9)
        )
        loss = masked.sum() / tokens / s.grad_accum
    elif s.loss_type == "dr_grpo":
        loss = masked.sum() / (per_token.shape[0] * s.max_completion_length) / s.grad_accum
    elif s.loss_type == "dapo":
        if generation_tokens is None:
            raise ValueError("loss_type='dapo' needs the generation batch's token count")
        loss = masked.sum() / (max(generation_tokens, 1.0) * s.grad_accum / s.steps_per_generation)
    else:
        raise ValueError(f"loss_type={s.loss_type!r}: choose one of {LOSS_TYPES}")
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - s.epsilon) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + s.epsilon_high) & (adv > 0)).to(mask.dtype)
        metrics = {
            "clip_ratio/low_mean": float((low * mask).sum() / n),
            "clip_ratio/high_mean": float((high * mask).sum() / n),
            "clip_ratio/region_mean": float((((low + high) > 0).to(mask.dtype) * mask).sum() / n),
        }
        if kl is not None:
            metrics["kl"] = float((kl * mask).sum() / n)
    return loss, metrics
