"""SwiGLU / GeGLU(tanh) kernels vs reference: forward and both input gradients."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from kernel_testing import CASES, SAME_DTYPE_TOL, assert_matches, forward_backward, upcast

from loris.kernels.activations import (
    geglu_tanh_reference,
    geglu_tanh_triton,
    swiglu_reference,
    swiglu_triton,
    tanh_f32,
)

OPS = {
    "swiglu": (swiglu_triton, swiglu_reference),
    "geglu_tanh": (geglu_tanh_triton, geglu_tanh_reference),
}


def _check(device: str, dtype: torch.dtype, op: str, gate: torch.Tensor, up: torch.Tensor) -> None:
    fused, ref = OPS[op]
    inputs = [gate.requires_grad_(), up.requires_grad_()]
    (y,), (dg, du) = forward_backward(fused, inputs, seed=3)
    (y_ref,), (dg_ref, du_ref) = forward_backward(ref, inputs, seed=3)
    (y_gold,), (dg_gold, du_gold) = forward_backward(ref, upcast(inputs), seed=3)
    assert_matches(y, y_ref, y_gold, dtype, f"{op} out")
    assert_matches(dg, dg_ref, dg_gold, dtype, f"{op} grad gate")
    assert_matches(du, du_ref, du_gold, dtype, f"{op} grad up")


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape", [(3, 5, 37), (2, 2100), (1, 1)])
def test_gated_activation_matches_reference(
    device: str, dtype: torch.dtype, op: str, shape: tuple[int, ...]
) -> None:
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    gate = (torch.randn(shape, generator=gen) * 4).to(device, dtype)  # reaches both tanh/sigmoid tails
    up = torch.randn(shape, generator=gen).to(device, dtype)
    _check(device, dtype, op, gate, up)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("op", list(OPS))
def test_gated_activation_on_fused_projection_halves(device: str, dtype: torch.dtype, op: str) -> None:
    """gate/up as the two halves of one (tokens, 2*I) projection output: strided views, no copy."""
    fused = torch.randn(2, 7, 2 * 45).to(device, dtype)
    gate, up = fused[..., :45], fused[..., 45:]
    _check(device, dtype, op, gate.detach().clone(), up.detach().clone())
    y = OPS[op][0](gate, up)
    torch.testing.assert_close(y, OPS[op][1](gate, up), **SAME_DTYPE_TOL[dtype])


@triton.jit
def _tanh_probe(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(Y + offs, tanh_f32(tl.load(X + offs, mask=mask)), mask=mask)


@pytest.mark.parametrize("device,dtype", CASES[:2])
def test_tanh_f32_is_accurate_across_its_range(device: str, dtype: torch.dtype) -> None:
    """Relative accuracy near 0 (the series branch), at the 1/4 switch and in saturation."""
    x = torch.cat(
        [
            torch.linspace(-30, 30, 2001),
            torch.logspace(-8, 0, 200),
            -torch.logspace(-8, 0, 200),
            torch.tensor([0.0, 0.2499999, 0.25, 0.2500001]),
        ]
    ).to(device)
    y = torch.empty_like(x)
    _tanh_probe[(triton.cdiv(x.numel(), 512),)](x, y, x.numel(), BLOCK=512)
    expected = torch.tanh(x.double())
    rel = ((y.double() - expected).abs() / expected.abs().clamp_min(1e-30)).max().item()
    assert rel < 1e-6, rel
