"""Gated MLP activations: SwiGLU ``silu(g) * u`` (Llama, Mistral, Qwen, Phi-3) and
GeGLU with tanh-approximated GELU ``gelu_tanh(g) * u`` (Gemma 2/3).

The Triton path reads gate and up once and writes the product once (fp32 math, one rounding).
Backward saves only the two inputs and recomputes the activation, so the (tokens x intermediate)
activation tensor is never stored. Inputs may be row-strided views (e.g. the two halves of a fused
``gate_up`` projection) without a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loris.kernels import use_triton

try:  # triton is CUDA-only; the reference path must keep working without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

_SILU, _GELU_TANH = 0, 1
_BLOCK = 1024


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def geglu_tanh_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


if triton is not None:

    @triton.jit
    def tanh_f32(x):
        """fp32 tanh built from ``exp`` (triton 3.6 has no ``tl.tanh``; libdevice can't be interpreted).

        ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` never overflows but loses relative precision
        near 0, where an odd Taylor series to x^9 (error < 1e-8 relative for |x| < 1/4) takes over.
        """
        a = tl.abs(x)
        e = tl.exp(-2.0 * a)
        t = (1.0 - e) / (1.0 + e)
        a2 = a * a
        series = a * (1.0 + a2 * (-0.3333333333333333 + a2 * (0.13333333333333333
                      + a2 * (-0.05396825396825397 + a2 * 0.021869488536155203))))  # fmt: skip
        t = tl.where(a < 0.25, series, t)
        return tl.where(x < 0.0, -t, t)

    @triton.jit
    def _gelu_tanh_parts(g):
        """GELU(tanh) and its derivative, both in fp32."""
        k0 = 0.7978845608028654  # sqrt(2 / pi)
        k1 = 0.044715
        t = tanh_f32(k0 * (g + k1 * g * g * g))
        act = 0.5 * g * (1.0 + t)
        dact = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * k0 * (1.0 + 3.0 * k1 * g * g)
        return act, dact

    @triton.jit
    def _gated_fwd_kernel(
        G, U, OUT, stride_g, stride_u, stride_o, n_cols,
        ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
        if ACT == 0:
            act = g * tl.sigmoid(g)
        else:
            act, _ = _gelu_tanh_parts(g)
        tl.store(OUT + row * stride_o + cols, (act * u).to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _gated_bwd_kernel(
        DY, G, U, DG, DU, stride_dy, stride_g, stride_u, stride_dg, stride_du, n_cols,
        ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
        if ACT == 0:
            s = tl.sigmoid(g)
            act = g * s
            dact = s * (1.0 + g * (1.0 - s))
        else:
            act, dact = _gelu_tanh_parts(g)
        tl.store(DG + row * stride_dg + cols, (dy * u * dact).to(DG.dtype.element_ty), mask=mask)
        tl.store(DU + row * stride_du + cols, (dy * act).to(DU.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (rows, n) with unit column stride; a view whenever the layout allows."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] == 1 else t2.contiguous()


def gated_forward(gate: torch.Tensor, up: torch.Tensor, act: int) -> torch.Tensor:
    """``act(gate) * up`` for (rows, n) inputs: the Triton launch without autograd."""
    n_rows, n_cols = gate.shape
    out = torch.empty((n_rows, n_cols), dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    if out.numel() > 0:
        grid = (n_rows, triton.cdiv(n_cols, _BLOCK))
        _gated_fwd_kernel[grid](
            gate, up, out, gate.stride(0), up.stride(0), out.stride(0), n_cols, ACT=act, BLOCK=_BLOCK
        )
    return out


def gated_backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act: int, in_place: bool = False):
    """(d gate, d up) of ``act(gate) * up`` for (rows, n) inputs, the activation recomputed.
    ``in_place`` writes them over ``gate`` and ``up`` (each element is read before it is written)."""
    n_rows, n_cols = gate.shape
    if in_place:
        dg, du = gate, up
    else:
        dg = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
        du = torch.empty((n_rows, n_cols), dtype=up.dtype, device=gate.device)
    if dg.numel() > 0:
        grid = (n_rows, triton.cdiv(n_cols, _BLOCK))
        _gated_bwd_kernel[grid](
            dy, gate, up, dg, du,
            dy.stride(0), gate.stride(0), up.stride(0), dg.stride(0), du.stride(0), n_cols,
            ACT=act, BLOCK=_BLOCK,
        )  # fmt: skip
    return dg, du


def gated_parts_reference(gate: torch.Tensor, act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(g), act'(g)) in fp32, written out so a hand-written backward can use them on CPU."""
    g = gate.float()
    if act == _SILU:
        s = torch.sigmoid(g)
        return g * s, s * (1.0 + g * (1.0 - s))
    k0, k1 = 0.7978845608028654, 0.044715
    t = torch.tanh(k0 * (g + k1 * g * g * g))
    return 0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * k0 * (1.0 + 3.0 * k1 * g * g)


ACTIVATION_IDS = {"silu": _SILU, "gelu_tanh": _GELU_TANH}


class GatedActivationFunction(torch.autograd.Function):
    """``act(gate) * up`` with the activation recomputed in backward."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, act: int) -> torch.Tensor:
        g2, u2 = _rows(gate), _rows(up)
        out = gated_forward(g2, u2, act)
        ctx.save_for_backward(g2, u2)
        ctx.act = act
        ctx.shapes = (gate.shape, up.shape)
        return out.view(gate.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        g2, u2 = ctx.saved_tensors
        dg, du = gated_backward(_rows(dy), g2, u2, ctx.act)
        return dg.view(ctx.shapes[0]), du.view(ctx.shapes[1]), None


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The Triton path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU)."""
    return GatedActivationFunction.apply(gate, up, _SILU)


def geglu_tanh_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The Triton path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU)."""
    return GatedActivationFunction.apply(gate, up, _GELU_TANH)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate) and gate.shape == up.shape:
        return swiglu_triton(gate, up)
    return swiglu_reference(gate, up)


def geglu_tanh(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate) and gate.shape == up.shape:
        return geglu_tanh_triton(gate, up)
    return geglu_tanh_reference(gate, up)


GATED_ACTIVATIONS = {"silu": swiglu, "gelu_tanh": geglu_tanh}
