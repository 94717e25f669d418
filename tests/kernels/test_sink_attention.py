"""Sink attention (gpt-oss): the SDPA path with the sink as an extra key against the written-out
definition, forward and every gradient (sinks included), causal, padded, windowed and decoding."""

from __future__ import annotations

import pytest
import torch

from loris.kernels.sink_attention import sink_attention, sink_attention_reference
from loris.models.decoder import causal_mask


def _inputs(b=2, h=4, kvh=2, n=9, kv=9, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.randn(b, kvh, kv, d, generator=g, dtype=torch.float64).requires_grad_()
    v = torch.randn(b, kvh, kv, d, generator=g, dtype=torch.float64).requires_grad_()
    sinks = (torch.randn(h, generator=g, dtype=torch.float64) * 2).requires_grad_()
    return q, k, v, sinks


def _eager_definition(q, k, v, mask, scale, sinks):
    """transformers' eager gpt-oss attention, written independently: scores, -inf mask, the sink
    appended as a last column, max-subtracted softmax, the column dropped."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    s = q @ k.transpose(-1, -2) * scale
    s = s.masked_fill(~mask, float("-inf"))
    s = torch.cat([s, sinks.reshape(1, -1, 1, 1).expand(*s.shape[:-1], 1)], -1)
    p = torch.softmax(s - s.amax(-1, keepdim=True), -1)[..., :-1]
    return p @ v


@pytest.mark.parametrize("case", ["causal", "padded", "window", "decode"])
def test_sdpa_path_equals_the_definition_forward_and_backward(case):
    n = kv = 9
    if case == "decode":
        n = 1
    q, k, v, sinks = _inputs(n=n, kv=kv)
    attention_mask = torch.ones(2, kv, dtype=torch.long)
    attention_mask[0, :3] = 0
    mask = {
        "causal": None,
        "padded": causal_mask(n, kv, 0, attention_mask, None, q.device),
        "window": causal_mask(n, kv, 0, None, 4, q.device),
        "decode": causal_mask(n, kv, kv - 1, attention_mask, 4, q.device),
    }[case]
    full = mask if mask is not None else causal_mask(n, kv, kv - n, None, None, q.device)
    scale = 0.3
    want = _eager_definition(q, k, v, full, scale, sinks)
    grads = []
    for fn in (sink_attention, sink_attention_reference):
        out = fn(q, k, v, mask, scale, sinks)
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
        grads.append(
            torch.autograd.grad(
                (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                (q, k, v, sinks),
            )
        )
    for a, b in zip(*grads, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_the_sink_takes_weight_away():
    """A very negative sink is plain attention; a large one pulls the output towards zero."""
    q, k, v, sinks = _inputs()
    with torch.no_grad():
        plain = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True, scale=0.3
        )
        torch.testing.assert_close(sink_attention(q, k, v, None, 0.3, torch.full_like(sinks, -1e4)), plain)
        assert sink_attention(q, k, v, None, 0.3, torch.full_like(sinks, 30.0)).abs().max() < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_runs_the_memory_efficient_kernel_and_matches_the_reference(dtype):
    """gpt-oss' head size 64 with 8 query heads per key head, causal and padded: SDPA's
    memory-efficient kernel alone (no math fallback) must take the padded sink key."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, sinks = (
        t.detach().cuda().to(dtype).requires_grad_() for t in _inputs(h=8, kvh=1, n=40, kv=40, d=64)
    )
    attention_mask = torch.ones(2, 40, dtype=torch.long, device="cuda")
    attention_mask[0, :5] = 0
    for mask in (None, causal_mask(40, 40, 0, attention_mask, 16, q.device)):
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            out = sink_attention(q, k, v, mask, 0.125, sinks)
            grads = torch.autograd.grad(out.float().square().sum(), (q, k, v, sinks))
        ref = sink_attention_reference(*(t.float() for t in (q, k, v)), mask, 0.125, sinks.float())
        want = torch.autograd.grad(ref.square().sum(), (q, k, v, sinks))
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
        for a, b in zip(grads, want, strict=True):
            assert ((a.float() - b).norm() / b.norm()).item() < 3e-2
