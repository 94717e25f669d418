"""RMSNorm: ``y = x / sqrt(mean(x^2) + eps) * (offset + w)``.

Llama-style models cast the normalised activations back to the input dtype before the weight
multiply (``offset=0``); Gemma-style models keep fp32 through ``(1 + w)`` and cast last
(``offset=1``). The reference reproduces both orders exactly so logits match transformers bit for bit
in fp32 and as closely as possible in half precision.

The Triton path normalises one row per program (the whole row sits in registers, so hidden sizes up
to 64k take one pass), saves only the fp32 ``1/rms`` of each row for backward, and computes the
weight gradient as per-program fp32 partial sums that one small torch reduction finishes.
"""

from __future__ import annotations

import torch

from loris.kernels import use_triton

try:  # triton is CUDA-only; the reference path must keep working without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

MAX_FUSED_HIDDEN = 65536  # one row per program in registers; wider rows take the reference path


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
) -> torch.Tensor:
    dtype = x.dtype
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if offset != 0.0:  # Gemma: scale in fp32, cast at the end
        return (normed * (offset + weight.float())).to(dtype)
    return weight * normed.to(dtype)


if triton is not None:

    @triton.jit
    def _rms_norm_fwd_kernel(
        X, W, Y, RSTD,
        stride_x, stride_y, n_cols, eps, offset,
        CAST_BEFORE_WEIGHT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        tl.store(RSTD + row, rstd)
        normed = x * rstd
        if CAST_BEFORE_WEIGHT:  # Llama: round to the input dtype, then multiply by w
            y = w * normed.to(X.dtype.element_ty).to(tl.float32)
        else:  # Gemma: (offset + w) in fp32, cast once at the end
            y = normed * (offset + w)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_norm_bwd_kernel(
        DY, X, W, RSTD, DX, DW_PART, DRES,
        stride_dy, stride_x, stride_dx, stride_dres, n_rows, n_cols, offset, rows_per_program,
        CAST_BEFORE_WEIGHT: tl.constexpr, COMPUTE_DW: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """d x of the norm; with ``HAS_RESIDUAL`` plus another gradient of x (``DRES``, the residual
        stream's, for `loris.kernels.add_rms_norm`), added in fp32 and rounded once."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if not CAST_BEFORE_WEIGHT:
            w = w + offset
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        row_start = pid.to(tl.int64) * rows_per_program
        for i in range(0, rows_per_program):
            row64 = row_start + i
            in_range = row64 < n_rows  # the last program may run past the final row
            row_mask = mask & in_range
            dy = tl.load(DY + row64 * stride_dy + cols, mask=row_mask, other=0.0).to(tl.float32)
            x = tl.load(X + row64 * stride_x + cols, mask=row_mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row64, mask=in_range, other=0.0)
            normed = x * rstd
            g = dy * w  # gradient w.r.t. the normalised activations
            if CAST_BEFORE_WEIGHT:
                # autograd rounds this gradient to the input dtype when it crosses the cast
                g = g.to(X.dtype.element_ty).to(tl.float32)
            dx = rstd * (g - normed * (tl.sum(g * normed, axis=0) / n_cols))
            if HAS_RESIDUAL:
                dx += tl.load(DRES + row64 * stride_dres + cols, mask=row_mask, other=0.0).to(tl.float32)
            tl.store(DX + row64 * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=row_mask)
            if COMPUTE_DW:
                if CAST_BEFORE_WEIGHT:
                    dw += dy * normed.to(X.dtype.element_ty).to(tl.float32)
                else:
                    dw += dy * normed
        if COMPUTE_DW:
            tl.store(DW_PART + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


def _launch_config(n_cols: int) -> tuple[int, int]:
    block = triton.next_power_of_2(n_cols)
    num_warps = 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, num_warps


def _num_programs(n_rows: int, device: torch.device) -> int:
    """Enough programs to fill the GPU; each keeps an fp32 partial of the weight gradient."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # interpreter: fewer programs run faster
        target = 4
    return max(1, min(n_rows, target))


def rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (rows, hidden) with a unit column stride (rows may stay spaced apart)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_norm_backward(
    dy2: torch.Tensor,
    x2: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    offset: float,
    compute_dw: bool,
    residual_grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(d x, d weight) of the norm for (rows, hidden) ``dy2`` and ``x2``; ``residual_grad``, another
    gradient of x, is added in the same pass (the fused residual add's backward)."""
    n_rows, n_cols = x2.shape
    dx = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
    n_prog = _num_programs(n_rows, x2.device)
    rows_per_program = triton.cdiv(max(n_rows, 1), n_prog)
    n_prog = triton.cdiv(max(n_rows, 1), rows_per_program)
    dw_part = torch.empty((n_prog, n_cols) if compute_dw else (1,), dtype=torch.float32, device=x2.device)
    dres = residual_grad if residual_grad is not None else dy2  # stand-in pointer, never read
    block, num_warps = _launch_config(n_cols)
    if n_rows > 0:
        _rms_norm_bwd_kernel[(n_prog,)](
            dy2, x2, weight, rstd, dx, dw_part, dres,
            dy2.stride(0), x2.stride(0), dx.stride(0), dres.stride(0), n_rows, n_cols, offset, rows_per_program,
            CAST_BEFORE_WEIGHT=offset == 0.0, COMPUTE_DW=compute_dw, HAS_RESIDUAL=residual_grad is not None,
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    dw = None
    if compute_dw:
        dw = dw_part.sum(0).to(weight.dtype) if n_rows > 0 else torch.zeros_like(weight)
    return dx, dw


class RMSNormFunction(torch.autograd.Function):
    """Fused RMSNorm; saves x, weight and one fp32 ``rstd`` per row."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
        shape = x.shape
        x2 = rows(x)
        n_rows, n_cols = x2.shape
        cast_before = offset == 0.0
        out_dtype = torch.promote_types(weight.dtype, x.dtype) if cast_before else x.dtype
        y = torch.empty((n_rows, n_cols), dtype=out_dtype, device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block, num_warps = _launch_config(n_cols)
        if n_rows > 0:
            _rms_norm_fwd_kernel[(n_rows,)](
                x2, weight, y, rstd, x2.stride(0), y.stride(0), n_cols, eps, offset,
                CAST_BEFORE_WEIGHT=cast_before, BLOCK=block, num_warps=num_warps,
            )  # fmt: skip
        ctx.save_for_backward(x2, weight, rstd)
        ctx.offset = offset
        ctx.shape = shape
        return y.view(*shape[:-1], n_cols)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(rows(dy), x2, weight, rstd, ctx.offset, ctx.needs_input_grad[1])
        return dx.view(ctx.shape), dw, None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """The Triton path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU)."""
    return RMSNormFunction.apply(x, weight, eps, float(offset))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last dimension; Triton on CUDA, the reference elsewhere."""
    if use_triton(x) and x.shape[-1] <= MAX_FUSED_HIDDEN:
        return rms_norm_triton(x, weight, eps, offset)
    return rms_norm_reference(x, weight, eps, offset)
