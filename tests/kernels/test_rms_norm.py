"""RMSNorm kernel vs reference: forward, grad x and grad weight, Llama and Gemma orders."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import CASES, SAME_DTYPE_TOL, assert_matches, forward_backward, interpreted, upcast

from loris.kernels import rms_norm as rms_mod
from loris.kernels.rms_norm import rms_norm_reference, rms_norm_triton


def test_kernels_are_interpreted_on_cpu() -> None:
    """The conftest switch must reach the kernels, or every CPU case below would error out."""
    if torch.cuda.is_available():
        pytest.skip("compiled kernels on CUDA machines")
    from triton.runtime.interpreter import InterpretedFunction

    assert interpreted()
    assert isinstance(rms_mod._rms_norm_fwd_kernel, InterpretedFunction)


def _check(device: str, dtype: torch.dtype, shape: tuple[int, ...], offset: float, weight_grad: bool) -> None:
    gen = torch.Generator().manual_seed(hash((shape, offset)) % 2**31)
    hidden = shape[-1]
    x = (torch.randn(shape, generator=gen) * 3 + 0.5).to(device, dtype).requires_grad_()
    w = (torch.randn(hidden, generator=gen) * 0.2 + (0.0 if offset else 1.0)).to(device, dtype)
    w.requires_grad_(weight_grad)
    eps = 1e-6
    (y,), (dx, dw) = forward_backward(rms_norm_triton, [x, w], seed=1, eps=eps, offset=offset)
    (y_ref,), (dx_ref, dw_ref) = forward_backward(rms_norm_reference, [x, w], seed=1, eps=eps, offset=offset)
    (y_gold,), (dx_gold, dw_gold) = forward_backward(
        rms_norm_reference, upcast([x, w]), seed=1, eps=eps, offset=offset
    )
    assert_matches(y, y_ref, y_gold, dtype, "y")
    assert_matches(dx, dx_ref, dx_gold, dtype, "grad x")
    if weight_grad:
        assert_matches(dw, dw_ref, dw_gold, dtype, "grad weight")
    else:
        assert dw is None


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(2, 3, 37), (5, 130), (1, 1, 1), (3, 1000)])
def test_rms_norm_matches_reference(
    device: str, dtype: torch.dtype, shape: tuple[int, ...], offset: float
) -> None:
    _check(device, dtype, shape, offset, weight_grad=True)


@pytest.mark.parametrize("device,dtype", CASES)
def test_rms_norm_wide_rows_and_frozen_weight(device: str, dtype: torch.dtype) -> None:
    """A hidden size past 8k (16 warps, one row in registers) and a frozen weight (no dW work)."""
    _check(device, dtype, (3, 9001), 1.0, weight_grad=False)
    _check(device, dtype, (2, 16384), 0.0, weight_grad=True)


@pytest.mark.parametrize("device,dtype", CASES)
def test_rms_norm_strided_input(device: str, dtype: torch.dtype) -> None:
    """A non-contiguous view (rows spaced apart) takes the same path as a dense tensor."""
    base = torch.randn(6, 2, 48).to(device, dtype)
    x = base[:, 0, :]  # row stride 96
    w = torch.randn(48).to(device, dtype)
    torch.testing.assert_close(
        rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5), **SAME_DTYPE_TOL[dtype]
    )


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm_fp32_weight_half_input(offset: float) -> None:
    """Llama order promotes to the weight's dtype (fp32 weight * bf16 activations -> fp32)."""
    x = torch.randn(4, 257, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(257, device="cuda")
    y = rms_norm_triton(x, w, 1e-6, offset)
    y_ref = rms_norm_reference(x, w, 1e-6, offset)
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref, rtol=1e-2, atol=1e-2)


def test_dispatch_uses_reference_on_cpu() -> None:
    x = torch.randn(2, 8)
    w = torch.randn(8)
    assert torch.equal(rms_mod.rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))
