"""Soft-capped attention (Gemma 2) through FlexAttention vs the plain score-matrix reference.

Tolerances: fp32 within 1e-4 relative L2 (output and the q/k/v gradients; only summation order
differs), bf16 on CUDA within 2e-2 (the reference rounds its probabilities to bf16, the fused kernel
does not). On CPU FlexAttention runs in its eager form, forward only (it has no CPU backward); on
CUDA compiled, as training uses it, with gradients.
"""

from __future__ import annotations

import pytest
import torch

from loris.kernels import softcap_attention as sa
from loris.models.decoder import causal_mask

CASES = [
    pytest.param("cpu", torch.float32, 1e-4, False, id="cpu-fp32-eager-flex"),
    pytest.param("cuda", torch.float32, 1e-4, True, id="cuda-fp32", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, 2e-2, True, id="cuda-bf16", marks=pytest.mark.gpu),
]


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _inputs(device, dtype, b=2, heads=4, kv_heads=2, n=67, d=32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, heads, n, d, generator=g) * 2
    k = torch.randn(b, kv_heads, n, d, generator=g) * 2
    v = torch.randn(b, kv_heads, n, d, generator=g)
    return [t.to(device, dtype).requires_grad_(device == "cuda") for t in (q, k, v)]


@pytest.mark.parametrize("device,dtype,tol,compiled", CASES)
@pytest.mark.parametrize("n", [67, 128])
def test_flex_matches_reference(device, dtype, tol, compiled, n):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    scale, cap = 0.125, 5.0  # a cap low enough that tanh bends most scores
    q, k, v = _inputs(device, dtype, n=n)
    out = sa.flex_softcap_attention(q, k, v, scale, cap, compiled=compiled)
    q2, k2, v2 = _inputs(device, dtype, n=n)
    ref = sa.softcap_attention_reference(q2, k2, v2, None, scale, cap)
    assert _rel(out, ref) < tol
    if device == "cuda":
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        for got, want in zip(grads, torch.autograd.grad(ref, (q2, k2, v2), dout), strict=True):
            assert _rel(got, want) < tol


def test_cap_changes_the_result():
    """Guards the test above: without the cap the reference differs, so a dropped score_mod fails."""
    q, k, v = _inputs("cpu", torch.float32)
    capped = sa.softcap_attention_reference(q, k, v, None, 0.125, 5.0)
    loose = sa.softcap_attention_reference(q, k, v, None, 0.125, 1e6)
    assert _rel(capped, loose) > 1e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_masks_and_cpu_take_the_reference(monkeypatch, device):
    """FlexAttention serves only unmasked CUDA prefills; a mask tensor (window, padding) or CPU
    inputs give the reference's result."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    called = []
    monkeypatch.setattr(sa, "flex_softcap_attention", lambda *a, **k: called.append(1))
    q, k, v = _inputs(device, torch.float32)
    mask = causal_mask(q.shape[2], q.shape[2], 0, None, 16, q.device)
    out = sa.softcap_attention(q, k, v, mask, 0.125, 5.0)
    torch.testing.assert_close(out, sa.softcap_attention_reference(q, k, v, mask, 0.125, 5.0))
    if device == "cpu":
        sa.softcap_attention(q, k, v, None, 0.125, 5.0)
    assert not called
