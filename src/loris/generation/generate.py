"""transformers-style ``generate`` on the engine: prompt ids in, prompt + continuation ids out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from loris.generation import engine
from loris.generation.sampling import SamplingConfig


def eos_list(eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]


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
    num_return_sequences: int = 1,
    options: engine.EngineOptions | None = None,
) -> torch.Tensor:
    """Prompt ids (batch, len) → prompt + continuation ids; rows finished on EOS are padded after it.

    Prompts must be left-padded when their lengths differ (``attention_mask`` marks the real tokens).
    ``on_tokens`` receives each step's new tokens (batch,), for streaming. With
    ``num_return_sequences`` = n, row i of the prompts gives rows i*n .. i*n+n-1 (one shared prefill).
    """
    eos = eos_list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    result = engine.run(
        model,
        input_ids,
        attention_mask,
        n=num_return_sequences,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_token_ids=eos,
        pad_token_id=pad,
        seed=seed,
        options=options,
        on_step=(lambda tok, _done: on_tokens(tok)) if on_tokens is not None else None,
    )
    prompts = input_ids.to(result.tokens.device).repeat_interleave(num_return_sequences, dim=0)
    return torch.cat([prompts, result.tokens], dim=1)
