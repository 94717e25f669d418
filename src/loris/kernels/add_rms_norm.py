"""Residual add fused with the RMSNorm that follows it: ``s = x + h; y = rms_norm(s, w, eps, offset)``.

In every decoder block the residual add is immediately followed by the pre-MLP norm. Unfused, that is
an elementwise add kernel, the RMSNorm kernel, and in backward a third elementwise kernel where
autograd adds the norm's input gradient to the residual-stream gradient. Fused, each direction is one
launch that reads the rows once: forward writes ``s`` and ``y`` together; backward returns
``ds + d(norm)/ds`` for both ``x`` and ``h``.

Numerics match :mod:`loris.kernels.rms_norm` (Llama order for ``offset=0``, Gemma order otherwise).
``s`` is summed in fp32 and rounded once to the input dtype, which is bit for bit what ``x + h`` gives
(fp32 holds more than twice the bits of bf16/fp16, so that double rounding is harmless). In backward
the reference rounds the norm's input gradient to the input dtype and then adds the residual gradient
in that dtype (two roundings); the kernel adds in fp32 and rounds once, so half-precision input
gradients may differ from the reference by an ulp, and are at least as close to an fp32 computation.

``s`` is saved for backward (not ``x`` and ``h``), so it must not be modified in place afterwards;
autograd raises if it is.
"""

from __future__ import annotations

import torch

from loris.kernels import use_triton
from loris.kernels.rms_norm import (
    MAX_FUSED_HIDDEN,
    _launch_config,
    rms_norm_backward,
    rms_norm_reference,
    rows,
)

try:  # triton is CUDA-only; the reference path must keep working without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None


def add_rms_norm_reference(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + h
    return s, rms_norm_reference(s, weight, eps, offset)


if triton is not None:

    @triton.jit
    def _add_rms_norm_fwd_kernel(
        X, H, W, S, Y, RSTD,
        stride_x, stride_h, stride_s, stride_y, n_cols, eps, offset,
        CAST_BEFORE_WEIGHT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32)
        s = (x + h).to(S.dtype.element_ty)  # one rounding of the exact sum, as torch's add does
        tl.store(S + row * stride_s + cols, s, mask=mask)
        s = s.to(tl.float32)  # the norm sees the rounded residual, as the reference's does
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(s * s, axis=0) / n_cols + eps)
        tl.store(RSTD + row, rstd)
        normed = s * rstd
        if CAST_BEFORE_WEIGHT:  # Llama: round to the input dtype, then multiply by w
            y = w * normed.to(S.dtype.element_ty).to(tl.float32)
        else:  # Gemma: (offset + w) in fp32, cast once at the end
            y = normed * (offset + w)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


class AddRMSNormFunction(torch.autograd.Function):
    """Fused residual add + RMSNorm; saves ``s``, the weight and one fp32 ``rstd`` per row."""

    @staticmethod
    def forward(ctx, x, h, weight, eps: float, offset: float):
        x2, h2 = rows(x), rows(h)
        n_rows, n_cols = x2.shape
        cast_before = offset == 0.0
        out_dtype = torch.promote_types(weight.dtype, x.dtype) if cast_before else x.dtype
        s = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        s2, y2 = s.view(-1, n_cols), y.view(-1, n_cols)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block, num_warps = _launch_config(n_cols)
        if n_rows > 0:
            _add_rms_norm_fwd_kernel[(n_rows,)](
                x2, h2, weight, s2, y2, rstd,
                x2.stride(0), h2.stride(0), s2.stride(0), y2.stride(0), n_cols, eps, offset,
                CAST_BEFORE_WEIGHT=cast_before, BLOCK=block, num_warps=num_warps,
            )  # fmt: skip
        ctx.save_for_backward(s, weight, rstd)
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not zeros
        ctx.offset = offset
        return s, y

    @staticmethod
    def backward(ctx, ds, dy):
        s, weight, rstd = ctx.saved_tensors
        if dy is None:  # y unused: s's gradient passes straight to x and h, as through x + h
            return ds, ds, None, None, None
        dx, dw = rms_norm_backward(
            rows(dy),
            s.view(-1, s.shape[-1]),
            weight,
            rstd,
            ctx.offset,
            ctx.needs_input_grad[2],
            residual_grad=rows(ds) if ds is not None else None,
        )
        dx = dx.view(s.shape)
        return dx, dx, dw, None, None  # d(x + h)/dx = d(x + h)/dh: one tensor serves both


def add_rms_norm_triton(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU)."""
    return AddRMSNormFunction.apply(x, h, weight, float(eps), float(offset))


def add_rms_norm(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + h, rms_norm(x + h, weight, eps, offset))``; one Triton kernel each way on CUDA, the
    reference elsewhere (and for mismatched shapes or dtypes, which ``x + h`` would broadcast or
    promote)."""
    fused = (
        use_triton(x)
        and x.shape[-1] <= MAX_FUSED_HIDDEN
        and h.shape == x.shape
        and h.dtype == x.dtype
        and h.device == x.device
    )
    if fused:
        return add_rms_norm_triton(x, h, weight, eps, offset)
    return add_rms_norm_reference(x, h, weight, eps, offset)
