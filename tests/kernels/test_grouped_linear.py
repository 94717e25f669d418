"""grouped_linear (torch's grouped GEMM, forward and backward) against the per-group matmul."""

from __future__ import annotations

import pytest
import torch

from loris.kernels.grouped_linear import grouped_linear, grouped_linear_reference


@pytest.mark.parametrize(
    "rows, in_f, out_f, ends",
    [
        (13, 8, 12, [4, 4, 13]),  # an empty middle group; grouped GEMM path (16-byte strides)
        (9, 16, 8, [0, 9, 9, 9]),  # empty first and last groups
        (7, 6, 5, [3, 7]),  # odd sizes: the loop fallback
    ],
)
def test_grouped_linear_matches_per_group_matmul(rows, in_f, out_f, ends):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, in_f, generator=g, requires_grad=True)
    w = torch.randn(len(ends), out_f, in_f, generator=g, requires_grad=True)
    offsets = torch.tensor(ends, dtype=torch.int32)
    y = grouped_linear(x, w, offsets)
    ref = grouped_linear_reference(x, w, offsets)
    torch.testing.assert_close(y, ref)
    dy = torch.randn(y.shape, generator=g)
    got = torch.autograd.grad(y, (x, w), dy)
    want = torch.autograd.grad(ref, (x, w), dy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_grouped_linear_bf16_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(300, 64, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, 128, 64, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    counts = torch.tensor([0, 50, 20, 70, 0, 100, 30, 30])
    offsets = counts.cumsum(0).to(torch.int32).cuda()
    y = grouped_linear(x, w, offsets)
    ref = grouped_linear_reference(x.float(), w.float(), offsets)
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
    dy = torch.randn(y.shape, device="cuda", generator=g, dtype=torch.bfloat16)
    got = torch.autograd.grad(y, (x, w), dy)
    want = torch.autograd.grad(ref, (x, w), dy.float())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b, rtol=3e-2, atol=1e-1)
