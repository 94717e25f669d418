"""Offloaded checkpointing on CUDA gives the gradients of plain checkpointing (GPU only; on CPU the
"offload" mode is plain recompute, covered in tests/test_lora.py and tests/trainers)."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris.lora import lora_modules

pytestmark = pytest.mark.gpu


def _grads(folder, mode, passes):
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.float32, load_in_4bit=False, device_map="cuda"
    )
    model = FastLanguageModel.get_peft_model(
        model, r=8, lora_alpha=16, random_state=0, use_gradient_checkpointing=mode
    )
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B, std=0.02, generator=torch.Generator(device="cuda").manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for p in passes:  # a list of micro-batch groups: forwards of a group run before its one backward
        total = 0
        for _ in range(p):
            ids = torch.randint(3, 160, (2, 48), generator=gen).cuda()
            total = total + model(ids, labels=ids).loss
        total.backward()
        losses.append(total.item())
    return losses, torch.cat([m.lora_A.grad.flatten() for _, m in lora_modules(model)])


@pytest.mark.parametrize("passes", [[1, 1, 1], [2, 1]], ids=["accumulate", "two-forwards-one-backward"])
def test_offload_matches_plain_checkpointing(saved_family, passes):
    _, folder = saved_family("llama")
    loss_p, grads_p = _grads(folder, True, passes)
    loss_o, grads_o = _grads(folder, "offload", passes)
    assert loss_o == pytest.approx(loss_p, rel=1e-6)
    assert ((grads_o - grads_p).norm() / grads_p.norm()).item() < 1e-5


def test_auto_matches_plain_checkpointing_and_keeps_blocks_on_cuda(saved_family):
    """On a card with room, the throughput mode keeps every block after the first step (no recompute)."""
    _, folder = saved_family("llama")
    loss_p, grads_p = _grads(folder, True, [1, 1, 1])
    loss_a, grads_a = _grads(folder, "auto", [1, 1, 1])
    assert loss_a == pytest.approx(loss_p, rel=1e-6)
    assert ((grads_a - grads_p).norm() / grads_p.norm()).item() < 1e-5
