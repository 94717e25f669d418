"""The per-block recompute Function (checkpointing mode True, and "offload" on CPU) against
`torch.utils.checkpoint` (the reference) and against no checkpointing: same losses and LoRA
gradients, dropout replayed identically, and no input gradient for a block whose input needs none."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from loris import FastLanguageModel
from loris import checkpointing as ck
from loris.lora import lora_modules


def _grads(folder, mode, dropout=0.0, passes=(1, 1)):
    model, _ = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model,
        r=8,
        lora_alpha=16,
        lora_dropout=dropout,
        random_state=0,
        use_gradient_checkpointing=True if mode == "torch" else mode,
    )
    if mode == "torch":  # the reference: torch's own non-reentrant checkpoint per block
        model.gradient_checkpointing = lambda block, x, cos, sin, mask: checkpoint(
            block, x, cos, sin, mask, use_reentrant=False
        )
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B, std=0.02, generator=torch.Generator().manual_seed(0))
    model.train()
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for p in passes:  # forwards of a group run before its one backward
        total = 0
        for _ in range(p):
            ids = torch.randint(3, 160, (2, 24), generator=gen)
            total = total + model(ids, labels=ids).loss
        total.backward()
        losses.append(total.item())
    return losses, torch.cat([t.grad.flatten() for _, m in lora_modules(model) for t in (m.lora_A, m.lora_B)])


@pytest.mark.parametrize("fused", [False, True], ids=["modules", "fused-lora"])
@pytest.mark.parametrize("mode", [True, "offload"])
@pytest.mark.parametrize("passes", [(1, 1), (2,)], ids=["accumulate", "two-forwards-one-backward"])
def test_recompute_matches_torch_checkpoint_and_no_checkpointing(
    saved_family, mode, passes, fused, monkeypatch
):
    """Also through the fused LoRA Functions (switched on for CPU tensors), whose first block then
    skips its input gradient."""
    import loris.lora as lora_mod

    monkeypatch.setattr(lora_mod, "_fast", lambda x: fused)
    _, folder = saved_family("llama")
    ref_loss, ref = _grads(folder, "torch", passes=passes)
    plain_loss, plain = _grads(folder, False, passes=passes)
    loss, got = _grads(folder, mode, passes=passes)
    assert loss == pytest.approx(ref_loss, rel=1e-6) and loss == pytest.approx(plain_loss, rel=1e-6)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-7)


def test_dropout_is_replayed_in_the_recomputation(saved_family):
    _, folder = saved_family("llama")
    loss, got = _grads(folder, True, dropout=0.2)
    ref_loss, ref = _grads(folder, "torch", dropout=0.2)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


class _Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(3.0))
        self.seen: list[bool] = []

    def forward(self, x, cos, sin, mask):
        self.seen.append(torch.is_grad_enabled() and x.requires_grad)  # would autograd track x?
        return x * self.w


@pytest.mark.parametrize("input_needs_grad", [False, True])
def test_input_gradient_only_where_the_input_needs_one(input_needs_grad):
    block, fn = _Scale(), ck.make_checkpoint_fn(True)
    x = torch.ones(4, requires_grad=input_needs_grad)
    fn(block, x, None, None, None).sum().backward()
    assert block.w.grad.item() == 4.0  # backward reached the block's parameter either way
    assert block.seen == [False, input_needs_grad]  # forward without autograd; recompute as needed
    assert (x.grad is not None) == input_needs_grad
    if input_needs_grad:
        torch.testing.assert_close(x.grad, torch.full((4,), 3.0))


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_recompute_matches_no_checkpointing_across_block_layouts(saved_family, family, monkeypatch):
    """Gemma 2's post-MLP norm reads the MLP's output, so its recompute cannot skip it; Qwen3's can."""
    import loris.lora as lora_mod

    monkeypatch.setattr(lora_mod, "_fast", lambda x: True)
    _, folder = saved_family(family)
    plain_loss, plain = _grads(folder, False)
    loss, got = _grads(folder, True)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-7)


def test_recompute_skips_the_mlp_output(saved_family, monkeypatch):
    """Per block and step the fused MLP's activation runs in forward and in backward (for the down
    adapter's gradient), not in the recompute, whose MLP output nothing reads."""
    import loris.lora as lora_mod
    from loris.kernels import lora_fused

    monkeypatch.setattr(lora_mod, "_fast", lambda x: True)
    calls = []
    real_act = lora_fused._act
    monkeypatch.setattr(lora_fused, "_act", lambda *a: calls.append(1) or real_act(*a))
    _, folder = saved_family("llama")
    _grads(folder, True, passes=(1,))
    with_checkpointing = len(calls)
    calls.clear()
    _grads(folder, False, passes=(1,))
    assert with_checkpointing == len(calls) > 0
