"""The "auto" throughput mode: after a first all-recompute step it keeps the activations of as many
(last) blocks as the measured headroom allows; gradients equal no checkpointing whatever it keeps.
Device memory is read through a fake here (CPU), so the decision itself is tested exactly."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris import checkpointing as ck
from loris.lora import lora_modules


@pytest.mark.parametrize(
    ("n", "block", "peak", "usable", "want"),
    [
        (4, 100, 900, 1000, 1),  # no headroom beyond the step that already kept one block
        (4, 100, 800, 1000, 2),
        (4, 100, 0, 10_000, 4),  # everything fits
        (4, 100, 1000, 1000, 0),  # over the fraction already: keep none
        (4, 0, 500, 1000, 4),  # nothing to keep per block
    ],
)
def test_blocks_to_keep(n, block, peak, usable, want):
    assert ck.blocks_to_keep(n, block, peak, usable, fraction=0.9) == want


class FakeMemory:
    """Allocations grow by ``cost`` during the measured block; the first step's peak is ``peak``."""

    def __init__(self, cost: int, peak: int, usable: int):
        self.cost, self._peak, self._usable, self.reads = cost, peak, usable, 0

    def allocated(self, device):
        self.reads += 1
        return 0 if self.reads % 2 else self.cost

    def peak(self, device):
        return self._peak

    def usable(self, device):
        return self._usable


def _run(folder, mode, memory=None, steps=3):
    model, _ = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=8, lora_alpha=16, random_state=0, use_gradient_checkpointing=mode
    )
    if memory is not None:
        model.gradient_checkpointing = ck.make_checkpoint_fn("auto", memory=memory)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B, std=0.02, generator=torch.Generator().manual_seed(0))
    recomputed: list[int] = []
    for i, block in enumerate(model.layers):
        real = block.backward_terms
        block.backward_terms = lambda *a, _i=i, _real=real: recomputed.append(_i) or _real(*a)
    model.train()
    gen = torch.Generator().manual_seed(0)
    losses, per_step = [], []
    for _ in range(steps):
        recomputed.clear()
        ids = torch.randint(3, 160, (2, 24), generator=gen)
        loss = model(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        per_step.append(sorted(recomputed))
    grads = torch.cat([t.grad.flatten() for _, m in lora_modules(model) for t in (m.lora_A, m.lora_B)])
    return losses, grads, per_step, model.gradient_checkpointing


def test_auto_keeps_the_last_blocks_that_fit_with_unchanged_gradients(saved_family):
    _, folder = saved_family("llama")  # 3 blocks
    plain_loss, plain, _, _ = _run(folder, False)
    out_bytes = 2 * 24 * 64 * 4
    cost = 1000 + out_bytes  # one block keeps 1000 bytes beyond its output
    fake = FakeMemory(cost=cost, peak=5000, usable=int((5000 + 1500) / 0.9) + 1)
    loss, got, recomputed, fn = _run(folder, "auto", memory=fake)
    assert fn.plan.block_bytes == 1000
    assert fn.plan.kept == 2  # 1 + 1500 // 1000
    assert recomputed == [[1, 2], [0], [0]]  # step 1 measures on block 0; then blocks 1 and 2 keep
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-7)


def test_auto_on_cpu_recomputes_every_block(saved_family):
    _, folder = saved_family("llama")
    plain_loss, plain, _, _ = _run(folder, False)
    loss, got, recomputed, fn = _run(folder, "auto")
    assert recomputed == [[0, 1, 2]] * 3 and fn.plan.kept == 0
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-7)
