"""Grouped linear: rows sorted by group, each group through its own weight, as one GEMM.

``grouped_linear(x, w, offsets)`` computes ``x[s:e] @ w[g].T`` for group ``g`` spanning rows
``s:e`` (``offsets`` are the cumulative row ends, int32). It is how Mixture-of-Experts layers run
all experts at once: tokens sorted by expert, one grouped GEMM per projection (torch's
``grouped_mm``, cuBLAS grouped GEMM on Hopper) instead of a Python loop of small matmuls.

The autograd Function computes both gradients with grouped GEMMs as well (``dx = dy_g @ w_g``,
``dw_g = dy_g.T @ x_g``). Where torch has no ``grouped_mm`` or the operands break its alignment
rule (every stride a multiple of 16 bytes), the same Function runs a loop over the groups;
`grouped_linear_reference` is the plain per-group matmul the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_linear_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``x[s:e] @ w[g].T`` per group, concatenated: the definition."""
    out, start = [], 0
    for g, end in enumerate(offsets.tolist()):
        out.append(x[start:end] @ w[g].t())
        start = end
    return torch.cat(out) if out else x.new_zeros(0, w.shape[1])


def _aligned(*tensors: torch.Tensor) -> bool:
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or any(
            s * size % 16 for s, n in zip(t.stride(), t.shape, strict=True) if s != 1
        ):
            return False
    return True


def _fast(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether torch's grouped GEMM takes these operands (CUDA wants 16-bit; CPU takes any float)."""
    if _GROUPED_MM is None or x.dtype != w.dtype:
        return False
    if x.is_cuda and x.dtype not in (torch.bfloat16, torch.float16):
        return False
    return x.shape[-1] * x.element_size() % 16 == 0 and w.shape[1] * w.element_size() % 16 == 0


def _mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return _GROUPED_MM(a, b, offs=offsets)


def _segments(offsets: torch.Tensor) -> list[tuple[int, int, int]]:
    out, start = [], 0
    for g, end in enumerate(offsets.tolist()):
        if end > start:
            out.append((g, start, end))
        start = end
    return out


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w, offsets)
        fast = _fast(x, w) and _aligned(x, w)
        ctx.fast = fast
        if fast:
            return _mm(x, w.transpose(1, 2), offsets)
        y = x.new_empty(x.shape[0], w.shape[1])
        for g, s, e in _segments(offsets):
            y[s:e] = x[s:e] @ w[g].t()
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, w, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dw = None
        fast = ctx.fast and _aligned(dy)
        if ctx.needs_input_grad[0]:
            if fast:
                dx = _mm(dy, w, offsets)
            else:
                dx = torch.zeros_like(x)
                for g, s, e in _segments(offsets):
                    dx[s:e] = dy[s:e] @ w[g]
        if ctx.needs_input_grad[1]:
            if fast:
                dw = _mm(dy.t(), x, offsets)
                if dw.shape[0] < w.shape[0]:  # groups past the last offset got no rows
                    dw = torch.cat([dw, dw.new_zeros(w.shape[0] - dw.shape[0], *dw.shape[1:])])
            else:
                dw = torch.zeros_like(w)
                for g, s, e in _segments(offsets):
                    dw[g] = dy[s:e].t() @ x[s:e]
        return dx, dw, None


def grouped_input_grad(dy: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``dy[s:e] @ w[g]`` per group: the input gradient of `grouped_linear` (for frozen weights
    that are rebuilt in backward rather than saved, such as dequantized 4-bit experts)."""
    dy = dy.contiguous()
    if _fast(dy, w) and w.shape[2] * w.element_size() % 16 == 0 and _aligned(dy, w):
        return _mm(dy, w, offsets.to(torch.int32))
    dx = dy.new_zeros(dy.shape[0], w.shape[2])
    for g, s, e in _segments(offsets):
        dx[s:e] = dy[s:e] @ w[g]
    return dx


def grouped_linear(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``x`` (rows, in) sorted by group, ``w`` (groups, out, in), ``offsets`` (groups,) int32 row
    ends → (rows, out). One grouped GEMM where torch has it, forward and backward."""
    if offsets.dtype != torch.int32:
        offsets = offsets.to(torch.int32)
    return _GroupedLinear.apply(x, w, offsets)
