"""Rows packing several samples (position ids restarting at 0) attend within each sample only."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_packed_row_equals_samples_run_alone(family, saved_family):
    _, folder = saved_family(family)
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.float32, load_in_4bit=False, device_map="cpu"
    )
    model.eval()
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 160, (n,), generator=g) for n in (5, 9, 4)]
    packed = torch.cat(samples)[None]
    positions = torch.cat([torch.arange(len(s)) for s in samples])[None]
    with torch.no_grad():
        got = model(packed, position_ids=positions).logits[0]
        alone = torch.cat([model(s[None]).logits[0] for s in samples])
        crossed = model(packed).logits[0]  # no restart: later samples see earlier ones
    assert (got - alone).abs().max().item() <= 1e-4
    assert (crossed - alone).abs().max().item() > 1e-3


def test_packed_loss_equals_unpacked_loss(saved_family):
    _, folder = saved_family("llama")
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.float32, load_in_4bit=False, device_map="cpu"
    )
    g = torch.Generator().manual_seed(1)
    samples = [torch.randint(3, 160, (n,), generator=g) for n in (6, 11, 3)]
    packed = torch.cat(samples)[None]
    positions = torch.cat([torch.arange(len(s)) for s in samples])[None]
    labels = packed.clone()
    labels[0, torch.cumsum(torch.tensor([len(s) for s in samples]), 0)[:-1]] = -100  # no predicting across
    total = sum(len(s) - 1 for s in samples)
    with torch.no_grad():
        packed_loss = model(packed, position_ids=positions, labels=labels, num_items_in_batch=total).loss
        sums = [model(s[None], labels=s[None], num_items_in_batch=1).loss for s in samples]
    assert abs(packed_loss.item() - sum(sums).item() / total) <= 1e-5
