"""Logit filters against transformers' own logits processors."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from loris.generation.sampling import SamplingConfig, apply_repetition_penalty, filter_logits


def test_filters_match_transformers_processors():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    seen = torch.randint(0, 50, (4, 7))
    cfg = SamplingConfig(
        do_sample=True, temperature=0.7, top_k=20, top_p=0.8, min_p=0.05, repetition_penalty=1.3
    )
    ref = RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    for warper in (
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(20),
        TopPLogitsWarper(0.8),
        MinPLogitsWarper(0.05),
    ):
        ref = warper(seen, ref)
    got = filter_logits(apply_repetition_penalty(logits.clone(), seen, 1.3), cfg)
    kept_ref, kept_got = torch.isfinite(ref) & (ref > -1e30), got > torch.finfo(got.dtype).min
    assert torch.equal(kept_ref, kept_got)
    assert torch.allclose(got[kept_got], ref[kept_ref])
