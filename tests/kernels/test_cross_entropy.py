"""Fused linear cross-entropy vs reference: loss, grad hidden, grad weight; chunking, ignore_index,
soft-capping, both reductions, frozen weight or hidden, non-unit upstream gradient."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_testing import CASES, assert_matches, forward_backward, upcast

from loris.kernels.cross_entropy import (
    _chunk_rows,
    linear_cross_entropy_reference,
    linear_cross_entropy_triton,
)


def _problem(
    device: str,
    dtype: torch.dtype,
    n: int,
    h: int,
    v: int,
    *,
    seed: int,
    ignore_first: int = 0,
    ignore_frac: float = 0.3,
    scale: float = 1.0,
):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) * scale / math.sqrt(h)).to(device, dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < ignore_frac] = -100
    labels[:ignore_first] = -100  # with small chunks, the first chunk holds only ignored tokens
    return hidden, weight, labels.to(device)


def _check(
    device: str,
    dtype: torch.dtype,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    grads: tuple[bool, bool] = (True, True),
    seed: int = 7,
    tol: float = 1e-5,
    **kwargs: object,
) -> None:
    ref_kwargs = {k: v for k, v in kwargs.items() if k in ("softcap", "reduction", "ignore_index")}
    hidden = hidden.requires_grad_(grads[0])
    weight = weight.requires_grad_(grads[1])

    def fused(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy_triton(h, w, labels, **kwargs)

    def ref(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy_reference(h, w, labels, **ref_kwargs)

    (loss,), (dh, dw) = forward_backward(fused, [hidden, weight], seed=seed)
    (loss_ref,), (dh_ref, dw_ref) = forward_backward(ref, [hidden, weight], seed=seed)
    (loss_gold,), (dh_gold, dw_gold) = forward_backward(ref, upcast([hidden, weight]), seed=seed)
    assert_matches(loss, loss_ref, loss_gold, dtype, "loss", tol)
    for name, ours, r, g, wanted in (
        ("grad hidden", dh, dh_ref, dh_gold, grads[0]),
        ("grad weight", dw, dw_ref, dw_gold, grads[1]),
    ):
        if wanted:
            assert_matches(ours, r, g, dtype, name, tol)
        else:
            assert ours is None, name


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "masked"])
def test_linear_ce_chunks_ignore_softcap(
    device: str, dtype: torch.dtype, softcap: float | None, reduction: str, compact: bool
) -> None:
    """5 chunks of 8 rows, the first all ignored; V=203 is a single partial vocabulary block."""
    hidden, weight, labels = _problem(device, dtype, 37, 24, 203, seed=1, ignore_first=8, scale=8.0)
    _check(
        device,
        dtype,
        hidden,
        weight,
        labels,
        softcap=softcap,
        reduction=reduction,
        chunk_rows=8,
        compact=compact,
    )


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_linear_ce_multi_block_vocab_default_chunking(
    device: str, dtype: torch.dtype, softcap: float | None
) -> None:
    """V=5003 spans two 4096-wide vocabulary blocks (the online max/sum-exp crosses a block edge)."""
    hidden, weight, labels = _problem(device, dtype, 19, 40, 5003, seed=2, scale=20.0)
    _check(device, dtype, hidden, weight, labels, softcap=softcap)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("grads", [(True, False), (False, True)], ids=["frozen-weight", "frozen-hidden"])
def test_linear_ce_frozen_inputs(device: str, dtype: torch.dtype, grads: tuple[bool, bool]) -> None:
    hidden, weight, labels = _problem(device, dtype, 21, 16, 77, seed=3)
    _check(device, dtype, hidden, weight, labels, grads=grads, chunk_rows=6)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "masked"])
def test_linear_ce_all_ignored(device: str, dtype: torch.dtype, reduction: str, compact: bool) -> None:
    """Mean over zero tokens is nan (as F.cross_entropy gives) with zero gradients; the sum is 0."""
    hidden, weight, labels = _problem(device, dtype, 9, 8, 31, seed=4, ignore_frac=1.1)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = linear_cross_entropy_triton(h, w, labels, reduction=reduction, chunk_rows=4, compact=compact)
    loss_ref = linear_cross_entropy_reference(hidden, weight, labels, reduction=reduction)
    torch.testing.assert_close(loss, loss_ref, equal_nan=True)
    loss.backward()
    assert torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0


@pytest.mark.parametrize("device,dtype", CASES[:1])
def test_linear_ce_unit_upstream_gradient(device: str, dtype: torch.dtype) -> None:
    """loss.backward() (upstream 1) returns the stored gradients as they are."""
    hidden, weight, labels = _problem(device, dtype, 12, 8, 50, seed=5)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    linear_cross_entropy_triton(h, w, labels, chunk_rows=5).backward()
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    linear_cross_entropy_reference(h_ref, w_ref, labels).backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6)


def test_linear_ce_rejects_out_of_range_labels() -> None:
    hidden, weight, _ = _problem("cpu", torch.float32, 4, 8, 10, seed=6)
    with pytest.raises(ValueError, match="labels must lie in"):
        linear_cross_entropy_triton(hidden, weight, torch.tensor([1, 2, 10, -100]))


def test_chunk_rows_bounds_logit_memory() -> None:
    """Llama-3-8B head (V=128256, H=4096): a chunk's logits stay within 1 GiB and cover >= 64 rows."""
    for n in (1, 100, 8192, 65536):
        rows = _chunk_rows(n, 128256, 4096, 2)
        assert 1 <= rows <= n
        assert rows * 128256 * 6 <= 1024 * 2**20
        assert rows == n or rows >= 64
