"""Fused q/k RMSNorm + rope kernel vs the plain composition: outputs, grads of q and k, dispatch.

q and k are strided views of one packed q|k|v buffer, as the attention projection produces them;
the buffer is the autograd leaf, so its gradient holds dq and dk where q and k live.

Tolerances: fp32 under the interpreter, outputs and grads within rtol=atol=1e-5 of the reference.
bf16 (interpreter and GPU): each result no further from an fp32 "gold" run than twice the bf16
reference's own error plus 1e-2 x the largest gold magnitude (``assert_matches``), and within
rtol=2e-2, atol=1e-2 x that magnitude of the bf16 reference directly (our rotation rounds once).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_matches, interpreted, upcast

from loris.kernels import qk_norm_rope as mod
from loris.kernels.qk_norm_rope import qk_norm_rope, qk_norm_rope_reference, qk_norm_rope_triton

needs_interpreter = pytest.mark.skipif(not interpreted(), reason="CPU cases need TRITON_INTERPRET=1")
EPS = 1e-6


def _inputs(batch, seq, hq, hk, dim, offset, *, generic, device="cpu", dtype=torch.float32, seed=0):
    """Packed (B, L, (hq + 2 hk) D) buffer, weights and per-batch-row cos/sin tables."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.randn(batch, seq, (hq + 2 * hk) * dim, generator=gen) * 2 + 0.3
    wq = torch.randn(dim, generator=gen) * 0.3 + (0.0 if offset else 1.0)
    wk = torch.randn(dim, generator=gen) * 0.3 + (0.0 if offset else 1.0)
    if generic:  # arbitrary tables whose halves differ: the backward must be the exact transpose
        cos, sin = torch.randn(batch, seq, dim, generator=gen), torch.randn(batch, seq, dim, generator=gen)
    else:  # real tables with different positions per batch row (packed / left-padded rows)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        emb = torch.randint(0, 4096, (batch, seq), generator=gen).float()[..., None] * inv_freq
        emb = torch.cat([emb, emb], dim=-1)
        cos, sin = emb.cos(), emb.sin()
    return [t.to(device, dtype) for t in (buf, wq, wk, cos, sin)]


def _run(fn, buf, wq, wk, cos, sin, hq, hk, offset, grads=None, seed=1):
    """Forward through ``fn`` on views of a fresh leaf copy of ``buf``; outputs, dq, dk, grads."""
    leaf = buf.detach().clone().requires_grad_()
    batch, seq, _ = buf.shape
    dim = cos.shape[-1]
    q = leaf[..., : hq * dim].unflatten(-1, (hq, dim))
    k = leaf[..., hq * dim : (hq + hk) * dim].unflatten(-1, (hk, dim))
    assert not q.is_contiguous() and not k.is_contiguous()
    qo, ko = fn(q, k, wq, wk, EPS, offset, cos, sin)
    if grads is None:  # contiguous (B, H, L, D), unlike the outputs' (B, L, H, D) storage
        gen = torch.Generator().manual_seed(seed)
        grads = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in (qo, ko)]
    torch.autograd.backward([qo, ko], grads)
    g = leaf.grad.unflatten(-1, (hq + 2 * hk, dim))
    assert not g[:, :, hq + hk :].any(), "v's slice got a gradient"
    return qo.detach(), ko.detach(), g[:, :, :hq], g[:, :, hq : hq + hk], grads


SHAPES = [(2, 5, 3, 1, 8), (2, 3, 4, 2, 16), (2, 1, 2, 2, 2)]


@needs_interpreter
@pytest.mark.parametrize("shape", SHAPES, ids=["d8-gqa3", "d16-gqa2", "single-pos-d2"])
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
@pytest.mark.parametrize("generic", [False, True], ids=["rotary", "generic-tables"])
def test_matches_reference_fp32(shape, offset, generic) -> None:
    batch, seq, hq, hk, dim = shape
    buf, wq, wk, cos, sin = _inputs(batch, seq, hq, hk, dim, offset, generic=generic, seed=sum(shape))
    qo, ko, dq, dk, grads = _run(qk_norm_rope_triton, buf, wq, wk, cos, sin, hq, hk, offset)
    qr, kr, dqr, dkr, _ = _run(qk_norm_rope_reference, buf, wq, wk, cos, sin, hq, hk, offset, grads)
    assert qo.shape == (batch, hq, seq, dim) and ko.shape == (batch, hk, seq, dim)
    assert qo.transpose(1, 2).is_contiguous() and ko.transpose(1, 2).is_contiguous()
    for ours, ref, what in ((qo, qr, "q"), (ko, kr, "k"), (dq, dqr, "dq"), (dk, dkr, "dk")):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5, msg=lambda m, w=what: f"{w}: {m}")


def _check_bf16(
    device, batch, seq, hq, hk, dim, offset, weight_dtype=torch.bfloat16, grad_layout="bhld", exact=False
):
    buf, wq, wk, cos, sin = _inputs(batch, seq, hq, hk, dim, offset, generic=False, device=device, seed=7)
    buf, cos, sin = (t.bfloat16() for t in (buf, cos, sin))
    wq, wk = wq.to(weight_dtype), wk.to(weight_dtype)
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(batch, seq, h, dim, generator=gen).transpose(1, 2) for h in (hq, hk)]
    if grad_layout == "bhld":
        grads = [g.contiguous() for g in grads]
    out_dtype = torch.float32 if weight_dtype == torch.float32 and offset == 0.0 else torch.bfloat16
    grads = [g.to(device, out_dtype) for g in grads]
    ours = _run(qk_norm_rope_triton, buf, wq, wk, cos, sin, hq, hk, offset, grads)[:4]
    ref = _run(qk_norm_rope_reference, buf, wq, wk, cos, sin, hq, hk, offset, grads)[:4]
    gold_in = upcast([buf, wq, wk, cos, sin])
    gold = _run(qk_norm_rope_reference, *gold_in, hq, hk, offset, [g.float() for g in grads])[:4]
    for o, r, g, what in zip(ours, ref, gold, ("q", "k", "dq", "dk"), strict=True):
        assert_matches(o, r, g, torch.bfloat16, what)
        scale = max(g.abs().max().item(), 1.0)
        torch.testing.assert_close(o, r, rtol=2e-2, atol=1e-2 * scale, msg=lambda m, w=what: f"{w}: {m}")
        if exact:  # both rotate in fp32: only the norm's roundings to bf16 remain, and they must agree
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5, msg=lambda m, w=what: f"{w} exact: {m}")


@needs_interpreter
@pytest.mark.usefixtures("bf16_rounds_to_nearest")
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32], ids=["bf16-w", "fp32-w"])
def test_matches_reference_bf16_interpreted(offset, weight_dtype) -> None:
    """bf16 activations; an fp32 weight promotes the Llama-order norm (and so rope) to fp32."""
    exact = weight_dtype == torch.float32 and offset == 0.0
    _check_bf16("cpu", 2, 5, 3, 1, 16, offset, weight_dtype, grad_layout="blhd", exact=exact)


@needs_interpreter
def test_gradient_through_k_only() -> None:
    """An unused q output leaves q without gradient; k's gradient is still right."""
    _, wq, wk, cos, sin = _inputs(2, 4, 2, 1, 8, 0.0, generic=True)
    q = torch.randn(2, 4, 2, 8, requires_grad=True)
    k = torch.randn(2, 4, 1, 8, requires_grad=True)
    qk_norm_rope_triton(q, k, wq, wk, EPS, 0.0, cos, sin)[1].sum().backward()
    assert q.grad is None
    k_ref = k.detach().clone().requires_grad_()
    qk_norm_rope_reference(q.detach(), k_ref, wq, wk, EPS, 0.0, cos, sin)[1].sum().backward()
    torch.testing.assert_close(k.grad, k_ref.grad, rtol=1e-5, atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
def test_dispatch(monkeypatch, offset) -> None:
    """Where Triton would run, frozen weights take the kernel; trainable ones the reference, which
    then also returns the weights' gradients."""
    monkeypatch.setattr(mod, "use_triton", lambda x: True)
    buf, wq, wk, cos, sin = _inputs(2, 3, 2, 1, 8, offset, generic=False)
    q, k = buf[..., :16].unflatten(-1, (2, 8)), buf[..., 16:24].unflatten(-1, (1, 8))
    qo, _ = qk_norm_rope(q.requires_grad_(), k, wq, wk, EPS, offset, cos, sin)
    assert type(qo.grad_fn).__name__ == "QKNormRopeFunctionBackward"
    ws = [w.clone().requires_grad_() for w in (wq, wk)]
    ws_ref = [w.clone().requires_grad_() for w in (wq, wk)]
    outs = qk_norm_rope(q, k, *ws, EPS, offset, cos, sin)
    refs = qk_norm_rope_reference(q, k, *ws_ref, EPS, offset, cos, sin)
    assert "QKNormRope" not in type(outs[0].grad_fn).__name__
    sum(o.square().sum() for o in outs).backward()
    sum(o.square().sum() for o in refs).backward()
    for w, w_ref in zip(ws, ws_ref, strict=True):
        assert w.grad is not None and w.grad.abs().sum() > 0
        torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


def test_dispatch_uses_reference_on_cpu() -> None:
    buf, wq, wk, cos, sin = _inputs(1, 2, 1, 1, 4, 0.0, generic=False)
    q, k = buf[..., :4].unflatten(-1, (1, 4)), buf[..., 4:8].unflatten(-1, (1, 4))
    for ours, ref in zip(
        qk_norm_rope(q, k, wq, wk, EPS, 0.0, cos, sin),
        qk_norm_rope_reference(q, k, wq, wk, EPS, 0.0, cos, sin),
        strict=True,
    ):
        assert torch.equal(ours, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
def test_matches_reference_bf16_gpu(offset) -> None:
    """Qwen3-1.7B's attention shape at a 4 x 2048 batch."""
    _check_bf16("cuda", 4, 2048, 16, 8, 128, offset)


@pytest.mark.gpu
def test_matches_reference_fp32_gpu() -> None:
    batch, seq, hq, hk, dim = 2, 256, 16, 8, 128
    buf, wq, wk, cos, sin = _inputs(batch, seq, hq, hk, dim, 0.0, generic=True, device="cuda")
    ours = _run(qk_norm_rope_triton, buf, wq, wk, cos, sin, hq, hk, 0.0)
    ref = _run(qk_norm_rope_reference, buf, wq, wk, cos, sin, hq, hk, 0.0, ours[4])
    for o, r in zip(ours[:4], ref[:4], strict=True):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
