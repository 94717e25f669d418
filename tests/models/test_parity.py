"""Logit parity with transformers' own classes for every family (fp32, tiny random checkpoints)."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from tiny_models import FAMILIES, VOCAB

TOL = 1e-4


def _load(folder):
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.float32, load_in_4bit=False, device_map="cpu"
    )
    return model.eval()


def _batch(seed: int = 0, b: int = 3, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (b, n), generator=g)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_unpadded(family, saved_family):
    hf, folder = saved_family(family)
    ours = _load(folder)
    ids = _batch()
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids).logits
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers_padded(family, side, saved_family):
    hf, folder = saved_family(family)
    ours = _load(folder)
    ids = _batch(1)
    mask = torch.ones_like(ids)
    lengths = [12, 9, 5]
    for row, length in enumerate(lengths):
        if side == "right":
            mask[row, length:] = 0
        else:
            mask[row, : 12 - length] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.isfinite(got).all()
    assert (got - ref).abs()[real].max().item() <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_explicit_positions(family, saved_family):
    hf, folder = saved_family(family)
    ours = _load(folder)
    ids = _batch(2)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    positions[1] += 7  # an offset continuation
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask, position_ids=positions).logits
    assert (got - ref).abs()[mask.bool()].max().item() <= TOL


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3"])
def test_loss_matches_transformers(family, saved_family):
    hf, folder = saved_family(family)
    ours = _load(folder)
    ids = _batch(3)
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        ref = hf(ids, labels=labels).loss
        got = ours(ids, labels=labels).loss
    assert abs(got.item() - ref.item()) <= 1e-5
