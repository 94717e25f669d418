"""Fused residual add + RMSNorm vs ``s = x + h; rms_norm_reference(s)``: both outputs, the gradients
of x, h and the weight, Llama and Gemma orders, and either output left unused.

Tolerances (kernel_testing.assert_matches): fp32 within 1e-5 of the reference (relative, and absolute
scaled by the largest gold magnitude); bf16/fp16 no further from an fp32 gold run than twice the
reference's own error plus 1e-2 (bf16) / 2e-3 (fp16) of the gold scale. ``s`` must equal ``x + h``
bit for bit in every dtype. The kernel rounds the input gradient once (norm gradient + residual
gradient in fp32) where the reference rounds twice, which the gold comparison allows for. Under the
interpreter with torch's bf16 rounding, the y-only path must match the reference within 1e-5 (same
rounding points), which catches a missing bf16 rounding step that the gold comparison would miss.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import CASES, SAME_DTYPE_TOL, assert_matches, forward_backward, interpreted, upcast

from loris.kernels import add_rms_norm as mod
from loris.kernels import rms_norm as rms_norm_mod
from loris.kernels.add_rms_norm import add_rms_norm, add_rms_norm_reference, add_rms_norm_triton

EPS = 1e-6
needs_interpreter = pytest.mark.skipif(not interpreted(), reason="needs TRITON_INTERPRET=1")


def test_kernels_are_interpreted_on_cpu() -> None:
    """The conftest switch must reach the kernels, or every CPU case below would error out."""
    if torch.cuda.is_available():
        pytest.skip("compiled kernels on CUDA machines")
    from triton.runtime.interpreter import InterpretedFunction

    assert interpreted()
    assert isinstance(mod._add_rms_norm_fwd_kernel, InterpretedFunction)
    assert isinstance(rms_norm_mod._rms_norm_bwd_kernel, InterpretedFunction)  # backward shares it


def _inputs(device, dtype, shape, offset, weight_dtype=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3 + 0.5).to(device, dtype)
    h = (torch.randn(shape, generator=gen) * 2 - 0.25).to(device, dtype)
    w = torch.randn(shape[-1], generator=gen) * 0.2 + (0.0 if offset else 1.0)
    return x, h, w.to(device, weight_dtype or dtype)


def _check(device, dtype, shape, offset, weight_grad, weight_dtype=None) -> None:
    x, h, w = _inputs(device, dtype, shape, offset, weight_dtype, seed=hash((shape, offset)) % 2**31)
    x.requires_grad_()
    h.requires_grad_()
    w.requires_grad_(weight_grad)
    kw = {"seed": 1, "eps": EPS, "offset": offset}
    (s, y), (dx, dh, dw) = forward_backward(add_rms_norm_triton, [x, h, w], **kw)
    (s_ref, y_ref), (dx_ref, dh_ref, dw_ref) = forward_backward(add_rms_norm_reference, [x, h, w], **kw)
    (s_gold, y_gold), (dx_gold, _, dw_gold) = forward_backward(
        add_rms_norm_reference, upcast([x, h, w]), **kw
    )
    assert s.dtype == s_ref.dtype and torch.equal(s, s_ref), "s must be exactly x + h"
    assert_matches(y, y_ref, y_gold, dtype, "y")
    assert_matches(dx, dx_ref, dx_gold, dtype, "grad x")
    assert_matches(dh, dh_ref, dx_gold, dtype, "grad h")
    assert torch.equal(dx, dh)
    if weight_grad:
        assert_matches(dw, dw_ref, dw_gold, dtype, "grad weight")
    else:
        assert dw is None


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("weight_grad", [True, False], ids=["train-w", "frozen-w"])
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
@pytest.mark.parametrize("shape", [(3, 5, 37), (7, 130), (1, 1, 1), (2, 1000)])
def test_matches_reference(device, dtype, shape, offset, weight_grad) -> None:
    _check(device, dtype, shape, offset, weight_grad)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
def test_only_y_used(device, dtype, offset) -> None:
    """s feeds nothing else: its gradient arrives as None and x, h get only the norm's gradient."""
    x, h, w = _inputs(device, dtype, (4, 3, 40), offset)
    g = torch.randn(x.shape).to(device, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, h, w)]
    refs = [t.clone().requires_grad_() for t in (x, h, w)]
    add_rms_norm_triton(*leaves, EPS, offset)[1].backward(g)
    add_rms_norm_reference(*refs, EPS, offset)[1].backward(g)
    golds = upcast(refs)
    add_rms_norm_reference(*golds, EPS, offset)[1].backward(g.float())
    for name, ours, ref, gold in zip("xhw", leaves, refs, golds, strict=True):
        assert_matches(ours.grad, ref.grad, gold.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("device,dtype", CASES)
def test_only_s_used(device, dtype) -> None:
    """y feeds nothing: x and h get s's gradient unchanged and the weight none, as through x + h."""
    x, h, w = _inputs(device, dtype, (5, 24), 0.0)
    leaves = [t.clone().requires_grad_() for t in (x, h, w)]
    g = torch.randn(x.shape).to(device, dtype)
    add_rms_norm_triton(*leaves, EPS)[0].backward(g)
    assert torch.equal(leaves[0].grad, g) and torch.equal(leaves[1].grad, g)
    assert leaves[2].grad is None


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
def test_strided_inputs_and_gradients(device, dtype, offset) -> None:
    """Row-strided x, column-strided h, and upstream gradients that are broadcast (``s.sum()``) or
    column-strided (through a transpose) give the same results as dense tensors."""
    base_x, base_h, w = _inputs(device, dtype, (6, 2, 48), offset)
    gy = torch.randn(48, 6).to(device, dtype)

    def run(fn, dt):
        x = base_x.detach().to(dt)[:, 0, :].requires_grad_()  # row stride 96
        h = base_h.detach().to(dt)[:, 1, :].t().contiguous().t().requires_grad_()  # column stride 6
        wl = w.detach().to(dt).requires_grad_()  # a leaf in every dtype (w itself may need grad)
        assert x.stride() == (96, 1) and h.stride() == (1, 6)
        s, y = fn(x, h, wl, EPS, offset)
        (s.sum() + (y.t() * gy.to(dt)).sum()).backward()
        return [s.detach(), y.detach(), x.grad, h.grad, wl.grad]

    ours, refs = run(add_rms_norm_triton, dtype), run(add_rms_norm_reference, dtype)
    golds = run(add_rms_norm_reference, torch.float32)
    for name, o, r, g in zip(["s", "y", "grad x", "grad h", "grad w"], ours, refs, golds, strict=True):
        assert_matches(o, r, g, dtype, name)


@needs_interpreter
@pytest.mark.usefixtures("bf16_rounds_to_nearest")
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32], ids=["bf16-w", "fp32-w"])
def test_bf16_interpreted(offset, weight_dtype) -> None:
    """bf16 on CPU: s exactly x + h, the Llama order's roundings, and an fp32 weight promoting y.

    With only y used, kernel and reference round at the same points (the norm sees the rounded s;
    Llama rounds the normalised rows and their gradient to bf16), so they must agree to fp32 noise,
    which the gold comparison alone would not notice. So must the weight gradient, except for a bf16
    weight in Llama order, where autograd also rounds each ``dy * normed`` product to bf16."""
    _check("cpu", torch.bfloat16, (3, 4, 72), offset, weight_grad=True, weight_dtype=weight_dtype)
    x, h, w = _inputs("cpu", torch.bfloat16, (3, 4, 72), offset, weight_dtype)
    ours, refs = ([t.clone().requires_grad_() for t in (x, h, w)] for _ in range(2))
    outs = add_rms_norm_triton(*ours, EPS, offset)
    outs_ref = add_rms_norm_reference(*refs, EPS, offset)
    g = torch.randn(x.shape).to(outs[1].dtype)
    outs[1].backward(g)
    outs_ref[1].backward(g)
    tight = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(outs[0], outs_ref[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[1], outs_ref[1], **tight)
    torch.testing.assert_close(ours[0].grad, refs[0].grad, **tight)
    torch.testing.assert_close(ours[1].grad, refs[1].grad, **tight)
    if offset != 0.0 or weight_dtype == torch.float32:
        torch.testing.assert_close(ours[2].grad, refs[2].grad, **tight)


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32], ids=["bf16-w", "fp32-w"])
def test_real_shape_bf16(offset, weight_dtype) -> None:
    """A decoder's activations: 8192 tokens x 2048 hidden in bf16 (many rows per backward program)."""
    _check("cuda", torch.bfloat16, (8192, 2048), offset, weight_grad=True, weight_dtype=weight_dtype)


def test_dispatch_uses_reference_on_cpu() -> None:
    x, h, w = _inputs("cpu", torch.float32, (2, 3, 8), 0.0)
    for ours, ref in zip(add_rms_norm(x, h, w, EPS), add_rms_norm_reference(x, h, w, EPS), strict=True):
        assert torch.equal(ours, ref)


@needs_interpreter
def test_dispatch_takes_the_kernel_where_triton_runs(monkeypatch) -> None:
    monkeypatch.setattr(mod, "use_triton", lambda t: True)
    x, h, w = (t.requires_grad_() for t in _inputs("cpu", torch.float32, (2, 3, 16), 1.0))
    s, y = add_rms_norm(x, h, w, EPS, 1.0)
    assert type(y.grad_fn).__name__ == "AddRMSNormFunctionBackward"
    s_ref, y_ref = add_rms_norm_reference(x, h, w, EPS, 1.0)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(y, y_ref, **SAME_DTYPE_TOL[torch.float32])
    # Rows too wide for registers, or inputs that x + h would broadcast or promote: the reference.
    monkeypatch.setattr(mod, "MAX_FUSED_HIDDEN", 8)
    assert type(add_rms_norm(x, h, w, EPS)[1].grad_fn).__name__ != "AddRMSNormFunctionBackward"
    monkeypatch.setattr(mod, "MAX_FUSED_HIDDEN", 16)
    for h2 in (h[:1], h.double()):
        s2, y2 = add_rms_norm(x, h2, w, EPS)
        assert type(y2.grad_fn).__name__ != "AddRMSNormFunctionBackward"
        assert torch.equal(s2, x + h2)
