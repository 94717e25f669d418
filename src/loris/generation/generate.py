"""A simple, correct KV-cache generation loop (batched, left padding, per-row stop on EOS)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from loris.generation.kv_cache import KVCache
from loris.generation.sampling import SamplingConfig, next_tokens


def _eos_set(eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Prompt ids (batch, len) → prompt + continuation ids; rows finished on EOS are padded after it.

    Prompts must be left-padded when their lengths differ (``attention_mask`` marks the real tokens).
    ``on_tokens`` receives each step's new tokens (batch,), for streaming.
    """
    sampling = sampling or SamplingConfig()
    device = model.device
    input_ids = input_ids.to(device)
    b, n = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device).long()
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts are right-padded; set tokenizer.padding_side = 'left' for generation")
    eos = _eos_set(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    cache = KVCache(model.config, b, n + max_new_tokens, model.dtype, device)
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    mask = torch.cat([attention_mask, attention_mask.new_ones(b, max_new_tokens)], dim=1)
    out = model(
        input_ids, attention_mask=mask[:, :n], position_ids=positions, kv_cache=cache, logits_to_keep=1
    )
    seen = input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    next_pos = positions[:, -1:] + 1
    generated = []
    for step in range(max_new_tokens):
        tok = next_tokens(out.logits[:, -1], sampling, seen, generator)
        tok = torch.where(finished, torch.full_like(tok, pad), tok)
        generated.append(tok)
        if on_tokens is not None:
            on_tokens(tok)
        if eos:
            finished |= torch.isin(tok, torch.tensor(eos, device=device))
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        seen = torch.cat([seen, tok[:, None]], dim=1)
        out = model(
            tok[:, None],
            attention_mask=mask[:, : cache.length + 1],
            position_ids=next_pos,
            kv_cache=cache,
        )
        next_pos = next_pos + 1
    return torch.cat([input_ids, torch.stack(generated, dim=1)], dim=1)
