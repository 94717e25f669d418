"""RoPE kernel vs reference: forward and grads of q and k, partial rotary, per-row positions."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import CASES, assert_matches, forward_backward, upcast

from loris.kernels.rope import apply_rope_reference, apply_rope_triton


def _tables(batch: int, seq: int, rot: int, *, generic: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real rotary tables with different positions per batch row, or arbitrary values (``generic``)
    whose two halves differ, which checks the backward is the exact transpose of the forward."""
    gen = torch.Generator().manual_seed(seed)
    if generic:
        return torch.randn(batch, seq, rot, generator=gen), torch.randn(batch, seq, rot, generator=gen)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    positions = torch.randint(0, 4096, (batch, seq), generator=gen).float()  # packed / left-padded rows
    freqs = positions[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _check(
    device: str, dtype: torch.dtype, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    inputs = [
        q.to(device, dtype).requires_grad_(),
        k.to(device, dtype).requires_grad_(),
        cos.to(device, dtype),
        sin.to(device, dtype),
    ]
    (qo, ko), (dq, dk, _, _) = forward_backward(apply_rope_triton, inputs, seed=5)
    (qr, kr), (dqr, dkr, _, _) = forward_backward(apply_rope_reference, inputs, seed=5)
    (qg, kg), (dqg, dkg, _, _) = forward_backward(apply_rope_reference, upcast(inputs), seed=5)
    assert_matches(qo, qr, qg, dtype, "q out")
    assert_matches(ko, kr, kg, dtype, "k out")
    assert_matches(dq, dqr, dqg, dtype, "grad q")
    assert_matches(dk, dkr, dkg, dtype, "grad k")


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize(
    "batch,hq,hk,seq,dim,rot",
    [(2, 3, 1, 5, 16, 16), (2, 4, 2, 7, 10, 6), (1, 5, 5, 3, 24, 8), (3, 2, 1, 1, 6, 2)],
    ids=["full", "partial", "partial-quarter", "single-pos"],
)
@pytest.mark.parametrize("generic", [False, True], ids=["rotary", "generic-tables"])
def test_rope_matches_reference(
    device: str, dtype: torch.dtype, batch: int, hq: int, hk: int, seq: int, dim: int, rot: int, generic: bool
) -> None:
    gen = torch.Generator().manual_seed(batch * 1000 + dim)
    q = torch.randn(batch, hq, seq, dim, generator=gen)
    k = torch.randn(batch, hk, seq, dim, generator=gen)
    cos, sin = _tables(batch, seq, rot, generic=generic, seed=dim)
    _check(device, dtype, q, k, cos, sin)


@pytest.mark.parametrize("device,dtype", CASES)
def test_rope_projection_layout_and_shared_tables(device: str, dtype: torch.dtype) -> None:
    """q/k as (B, L, H, D) projections viewed (B, H, L, D), with one (1, L, R) table for all rows."""
    q = torch.randn(2, 6, 4, 12).transpose(1, 2)
    k = torch.randn(2, 6, 2, 12).transpose(1, 2)
    cos, sin = _tables(1, 6, 12, generic=False, seed=9)
    _check(device, dtype, q, k, cos, sin)
    qo, _ = apply_rope_triton(
        q.to(device, dtype), k.to(device, dtype), cos.to(device, dtype), sin.to(device, dtype)
    )
    assert qo.stride() == q.stride()  # the output keeps the input's layout


@pytest.mark.parametrize("device,dtype", CASES[:1])
def test_rope_gradient_through_k_only(device: str, dtype: torch.dtype) -> None:
    """An unused q output must leave q without gradient, and k's gradient must still be right."""
    cos, sin = _tables(2, 4, 8, generic=True, seed=2)
    q = torch.randn(2, 2, 4, 8, requires_grad=True)
    k = torch.randn(2, 1, 4, 8, requires_grad=True)
    apply_rope_triton(q, k, cos, sin)[1].sum().backward()
    assert q.grad is None
    k_ref = k.detach().clone().requires_grad_()
    apply_rope_reference(q.detach(), k_ref, cos, sin)[1].sum().backward()
    torch.testing.assert_close(k.grad, k_ref.grad, rtol=1e-5, atol=1e-5)
