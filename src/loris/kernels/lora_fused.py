"""Fused LoRA projections and the fused LoRA MLP, with hand-written backward passes.

A LoRA projection is ``y = x W^T + s (x A^T) B^T`` with W frozen. Left to autograd, every
projection launches a scaling and an addition over its whole (tokens x out) output, and keeps
``x A^T`` and the scaled update alive for backward. Here:

* the update is accumulated into the base output by the GEMM itself (``addmm_``, beta = 1);
* projections that read the same input (q/k/v, gate/up) share one ``x [A_q; A_k; A_v]^T`` product;
* backward accumulates every input gradient into one buffer with ``addmm_`` (no elementwise adds),
  reuses the small ``x A^T`` kept from forward (1% of ``x`` at r=16) rather than reading ``x`` again,
  and computes every projection's dA in one pass over ``x``;
* the MLP (``down(act(gate(x)) * up(x))``) saves only x, gate and up; the activation is
  recomputed in backward and its gradients are written over gate and up in place.

Base weights stay frozen and are never copied for backward: 16-bit weights are used as stored,
quantized ones are dequantized when needed (forward, and again in backward).

The public entry points take LoRA modules (anything with ``base``, ``scaling``, ``lora_A``,
``lora_B`` and ``adapter_weights(dtype)``, i.e. `loris.lora.LoraLinear`). The reference they are
tested against is the modules' own forward under autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loris.kernels import use_triton
from loris.kernels.activations import gated_backward, gated_forward, gated_parts_reference
from loris.quant import QuantizedLinear


def memo_on(owner, attr: str, key: tuple, build, refill=None):
    """``build()``, kept on ``owner`` as ``attr`` until ``key`` (versions of the tensors it was built
    from) changes: derived adapter tensors are rebuilt once per optimizer step, not once per use.

    A rebuild of the same shapes lands in the tensors already handed out, so a CUDA graph captured
    over them (the decode step) sees the new adapter without being captured again: ``refill(old)``
    writes the new values straight into them (one kernel per tensor, no temporary) and returns True,
    or returns False when they no longer fit; then ``build()``'s result is copied in or replaces them."""
    cached = getattr(owner, attr, None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            if cached is not None and refill is not None and refill(cached[1]):
                setattr(owner, attr, (key, cached[1]))
                return cached[1]
            fresh = build()
            if cached is not None and _same_layout(cached[1], fresh):
                for old, new in zip(_as_tuple(cached[1]), _as_tuple(fresh), strict=True):
                    old.copy_(new)
                fresh = cached[1]
        cached = (key, fresh)
        setattr(owner, attr, cached)
    return cached[1]


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _same_layout(old, new) -> bool:
    olds, news = _as_tuple(old), _as_tuple(new)
    return len(olds) == len(news) and all(
        o.shape == n.shape and o.dtype == n.dtype and o.device == n.device and o.stride() == n.stride()
        for o, n in zip(olds, news, strict=True)
    )


def _versions(tensors) -> tuple:
    return tuple((t._version, t.data_ptr()) for t in tensors)


def _dense_weight(base, dtype: torch.dtype) -> torch.Tensor:
    return base.dequantize(dtype) if isinstance(base, QuantizedLinear) else base.weight.to(dtype)


def _stacked_a(mods: Sequence, pairs, dtype: torch.dtype) -> torch.Tensor:
    """[A_1; A_2; ...] in ``dtype``, kept on the first module until any A changes."""
    if len(pairs) == 1:
        return pairs[0][0]
    key = (dtype, *map(id, mods), *_versions(m.lora_A for m in mods))
    sources = [a for a, _ in pairs]

    def refill(old: torch.Tensor) -> bool:
        if old.shape != (sum(a.shape[0] for a in sources), sources[0].shape[1]) or not old.is_contiguous():
            return False
        torch.cat(sources, out=old)
        return True

    return memo_on(mods[0], f"_stacked_a_cache_{dtype}", key, lambda: torch.cat(sources), refill)


def _base_into(y: torch.Tensor, x2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y += x2 w^T``: the large GEMM accumulates onto the small one's output in its epilogue
    (beta = 1), so the (tokens x out) output is written once and read once, instead of written by
    the base GEMM and then read and written again to add the update."""
    return y.addmm_(x2, w.t())


def _base_plus(x2: torch.Tensor, w: torch.Tensor, xa: torch.Tensor, b: torch.Tensor, bias=None, scaling=1.0):
    """``bias + x2 w^T + scaling * xa b^T``. The update's GEMM goes first and the base GEMM adds onto
    it, except for a reduction much longer than the output is wide (the gate|up input gradient),
    where cuBLAS' accumulating kernels measured slower (benchmarks/lora_gemm_order.py, H100)."""
    if x2.shape[1] > 4 * w.shape[0]:
        y = x2 @ w.t() if bias is None else torch.addmm(bias.to(x2.dtype), x2, w.t())
        return y.addmm_(xa, b.t(), alpha=scaling)
    return _base_into(_update(xa, b, bias, scaling), x2, w)


def _update(xa: torch.Tensor, b: torch.Tensor, bias, scaling: float = 1.0) -> torch.Tensor:
    """``bias + scaling * xa b^T``, a new (tokens x out) tensor for `_base_into` to accumulate onto."""
    if bias is None:
        return torch.mm(xa, b.t()) if scaling == 1.0 else torch.mm(xa * scaling, b.t())
    return torch.addmm(bias.to(xa.dtype), xa, b.t(), alpha=scaling)


def _project(x2: torch.Tensor, mods: Sequence, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Forward of projections sharing the 2-D input ``x2``: one shared ``x A^T``, each output written
    by its update's GEMM and completed by the base GEMM accumulating onto it. Returns the outputs and
    ``x [A_1; A_2; ...]^T``, which backward reuses."""
    pairs = [m.adapter_weights(dtype) for m in mods]
    xa = x2 @ _stacked_a(mods, pairs, dtype).t()
    outs, start = [], 0
    for m, (a, b) in zip(mods, pairs, strict=True):
        r = a.shape[0]
        outs.append(
            _base_plus(x2, _dense_weight(m.base, dtype), xa[:, start : start + r], b, m.base.bias, m.scaling)
        )
        start += r
    return outs, xa


def _project_backward(
    x2: torch.Tensor,
    xa: torch.Tensor,
    mods: Sequence,
    dys: Sequence[torch.Tensor],
    dtype: torch.dtype,
    need_dx: bool,
    need_ab,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """d input (the updates' share in one GEMM over the stacked A, the bases accumulated onto it)
    and dA, dB per projection, from the input ``x2`` and the forward's ``x A^T`` (``xa``). Every dA
    comes out of one GEMM over ``x2``: its rows are ``s_i (dy_i B_i)^T x``."""
    pairs = [m.adapter_weights(dtype) for m in mods]
    a_cat = _stacked_a(mods, pairs, dtype)
    scaled = [(dy @ b) * m.scaling for dy, m, (_, b) in zip(dys, mods, pairs, strict=True)]
    scaled = torch.cat(scaled, dim=1) if len(scaled) > 1 else scaled[0]  # (tokens, sum of ranks)
    dx = None
    if need_dx:
        dx = scaled @ a_cat
        for m, dy in zip(mods, dys, strict=True):
            _base_into(dx, dy, _dense_weight(m.base, dtype).t())
    if not any(need_ab):
        return dx, [None] * (2 * len(mods))
    d_a = scaled.t() @ x2
    grads: list[torch.Tensor | None] = []
    start = 0
    for i, (m, (a, _), dy) in enumerate(zip(mods, pairs, dys, strict=True)):
        r = a.shape[0]
        if need_ab[i]:
            grads.append(d_a[start : start + r].to(m.lora_A.dtype))
            grads.append((dy.t() @ xa[:, start : start + r]).mul_(m.scaling).to(m.lora_B.dtype))
        else:
            grads += [None, None]
        start += r
    return dx, grads


def _adapter_grads(m, x2: torch.Tensor, dy: torch.Tensor, dyb: torch.Tensor, xa: torch.Tensor) -> list:
    """[dA, dB] of one projection from its input, output gradient, ``dy B`` and ``x A^T``."""
    return [
        (dyb.t() @ x2).mul_(m.scaling).to(m.lora_A.dtype),
        (dy.t() @ xa).mul_(m.scaling).to(m.lora_B.dtype),
    ]


def _block_b(mods: Sequence, pairs, dtype: torch.dtype) -> torch.Tensor:
    """blockdiag(s_1 B_1, s_2 B_2, ...): one GEMM adds every update to a packed output."""
    key = (dtype, *map(id, mods), *(m.scaling for m in mods), *_versions(m.lora_B for m in mods))
    blocks = [(b, m.scaling) for m, (_, b) in zip(mods, pairs, strict=True)]

    def refill(old: torch.Tensor) -> bool:
        if old.shape != (sum(b.shape[0] for b, _ in blocks), sum(b.shape[1] for b, _ in blocks)):
            return False
        old.zero_()  # the ranks may split differently than last time
        r0 = o0 = 0
        for b, scaling in blocks:
            torch.mul(b, scaling, out=old[o0 : o0 + b.shape[0], r0 : r0 + b.shape[1]])
            r0, o0 = r0 + b.shape[1], o0 + b.shape[0]
        return True

    return memo_on(
        mods[0], f"_block_b_cache_{dtype}", key, lambda: torch.block_diag(*(b * s for b, s in blocks)), refill
    )


def _project_packed(x2, mods: Sequence, w: torch.Tensor, bias, dtype: torch.dtype):
    """Projections whose base weights are stacked in ``w``: one GEMM for the shared ``x A^T``, one
    (block-diagonal B) writing every update, one for the bases accumulating onto it. Returns
    (tokens, sum of outputs) and ``x A^T``."""
    pairs = [m.adapter_weights(dtype) for m in mods]
    xa = x2 @ _stacked_a(mods, pairs, dtype).t()
    return _base_plus(x2, w.to(dtype), xa, _block_b(mods, pairs, dtype), bias), xa


def _project_packed_backward(x2, xa, mods: Sequence, w, dy: torch.Tensor, dtype, need_dx: bool, need_ab):
    """d input and (dA, dB) per projection for `_project_packed`; ``dy`` is (tokens, sum of outputs),
    ``xa`` the forward's ``x A^T``."""
    pairs = [m.adapter_weights(dtype) for m in mods]
    a_cat, b_bd = _stacked_a(mods, pairs, dtype), _block_b(mods, pairs, dtype)
    dyb = dy @ b_bd  # (tokens, sum of ranks), scalings included
    dx = None
    if need_dx:
        dx = _base_plus(dy, w.to(dtype).t(), dyb, a_cat.t())
    grads: list[torch.Tensor | None] = []
    if not any(need_ab):
        return dx, [None] * (2 * len(mods))
    d_a = dyb.t() @ x2
    d_b = dy.t() @ xa  # (sum of outputs, sum of ranks): only its diagonal blocks are used
    r0 = o0 = 0
    for i, (m, (a, b)) in enumerate(zip(mods, pairs, strict=True)):
        r, n = a.shape[0], b.shape[0]
        if need_ab[i]:
            grads.append(d_a[r0 : r0 + r].to(m.lora_A.dtype))
            grads.append((d_b[o0 : o0 + n, r0 : r0 + r] * m.scaling).to(m.lora_B.dtype))
        else:
            grads += [None, None]
        r0, o0 = r0 + r, o0 + n
    return dx, grads


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _act(g: torch.Tensor, u: torch.Tensor, act: int) -> torch.Tensor:
    if use_triton(g):
        return gated_forward(g, u, act)
    a, _ = gated_parts_reference(g, act)
    return (a * u.float()).to(g.dtype)


def _act_backward_(dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor, act: int):
    """(d gate, d up), written over ``g`` and ``u`` (each element is read before it is written)."""
    if use_triton(g):
        return gated_backward(dh, g, u, act, in_place=True)
    a, da = gated_parts_reference(g, act)
    dhf = dh.float()
    dg, du = (dhf * u.float() * da), (dhf * a)
    g.copy_(dg)
    u.copy_(du)
    return g, u


class LoraProjectionsFunction(torch.autograd.Function):
    """Several LoRA projections of one input ``x``; inputs after ``mods`` are (A, B) per projection."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mods: tuple, *adapters: torch.Tensor):
        x2 = _rows(x)
        outs, xa = _project(x2, mods, x.dtype)
        ctx.save_for_backward(x2, xa, *adapters)
        ctx.mods, ctx.shape = mods, x.shape
        return tuple(y.view(*x.shape[:-1], y.shape[-1]) for y in outs)

    @staticmethod
    def backward(ctx, *dys: torch.Tensor):
        x2, xa = ctx.saved_tensors[:2]
        dys2 = [
            _rows(dy) if dy is not None else x2.new_zeros(x2.shape[0], m.out_features)
            for dy, m in zip(dys, ctx.mods, strict=True)
        ]
        need_ab = [
            ctx.needs_input_grad[2 + 2 * i] or ctx.needs_input_grad[3 + 2 * i] for i in range(len(ctx.mods))
        ]
        dx, grads = _project_backward(
            x2, xa, ctx.mods, [d.to(x2.dtype) for d in dys2], x2.dtype, ctx.needs_input_grad[0], need_ab
        )
        return (dx.view(ctx.shape) if dx is not None else None), None, *grads


class LoraPackedFunction(torch.autograd.Function):
    """LoRA projections of one input whose base weights are stacked (``w``, ``bias``); returns the
    concatenated outputs. Inputs after ``bias`` are (A, B) per projection."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mods: tuple, w: torch.Tensor, bias, *adapters: torch.Tensor):
        x2 = _rows(x)
        y, xa = _project_packed(x2, mods, w, bias, x.dtype)
        ctx.save_for_backward(x2, xa, *adapters)
        ctx.mods, ctx.w, ctx.shape = mods, w, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, xa = ctx.saved_tensors[:2]
        need = ctx.needs_input_grad
        need_ab = [need[4 + 2 * i] or need[5 + 2 * i] for i in range(len(ctx.mods))]
        dx, grads = _project_packed_backward(
            x2, xa, ctx.mods, ctx.w, _rows(dy).to(x2.dtype), x2.dtype, need[0], need_ab
        )
        return (dx.view(ctx.shape) if dx is not None else None), None, None, None, *grads


_MLP_ADAPTERS = 5  # LoraMLPFunction's inputs before the (A, B) pairs: x, mods, act, packed, skip_output


class LoraMLPFunction(torch.autograd.Function):
    """``down(act(gate(x)) * up(x))`` with LoRA on all three; saves x, gate, up only.

    With ``skip_output`` the output is a zero-stride placeholder: backward needs only x, gate and up,
    so a recompute that merely back-propagates (activation checkpointing) skips the activation and
    the down projection."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, mods: tuple, act: int, packed, skip_output: bool, *adapters: torch.Tensor
    ):
        x2 = _rows(x)
        if packed is None:
            (g, u), xa = _project(x2, mods[:2], x.dtype)
            kept = (g, u)
        else:  # gate and up stacked: one GEMM, g and u are column halves of its output
            gu, xa = _project_packed(x2, mods[:2], packed[0], packed[1], x.dtype)
            g, u = gu.split(mods[0].out_features, dim=1)
            kept = (gu,)
        # Everything backward needs goes through save_for_backward (never a ctx attribute), so
        # activation checkpointing can drop it and recompute it.
        ctx.save_for_backward(x2, xa, *kept, *adapters)
        ctx.mods, ctx.act, ctx.shape, ctx.packed = mods, act, x.shape, packed
        shape = (*x.shape[:-1], mods[2].out_features)
        if skip_output:
            return x.new_zeros(()).expand(shape)
        (out,), _ = _project(_act(g, u, act), mods[2:], x.dtype)
        return out.view(shape)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        if ctx.mods is None:
            raise RuntimeError("the fused LoRA MLP's backward reuses its saved tensors: it cannot run twice")
        saved = ctx.saved_tensors
        x2, xa = saved[0], saved[1]
        if ctx.packed is None:
            g, u = saved[2], saved[3]
        else:
            gu = saved[2]
            g, u = gu.split(ctx.mods[0].out_features, dim=1)
        dtype = x2.dtype
        need = ctx.needs_input_grad
        ab = need[_MLP_ADAPTERS:]  # A, B of gate, up, down
        down = ctx.mods[2]
        a_d, b_d = down.adapter_weights(dtype)
        dout2 = _rows(dout).to(dtype)
        dyb = dout2 @ b_d
        grads_down: list = [None, None]
        if ab[4] or ab[5]:
            h = _act(g, u, ctx.act)  # recomputed, and dropped before dh exists: never both alive
            grads_down = _adapter_grads(down, h, dout2, dyb, h @ a_d.t())
            del h
        dh = _base_plus(dout2, _dense_weight(down.base, dtype).t(), dyb, a_d.t(), scaling=down.scaling)
        dg, du = _act_backward_(dh, g, u, ctx.act)  # written over g and u
        del dh
        need_gu = [ab[0] or ab[1], ab[2] or ab[3]]
        if ctx.packed is None:
            dx, grads_gu = _project_backward(x2, xa, ctx.mods[:2], [dg, du], dtype, need[0], need_gu)
        else:  # g and u are the halves of one buffer, which now holds [dg | du]
            dx, grads_gu = _project_packed_backward(
                x2, xa, ctx.mods[:2], ctx.packed[0], gu, dtype, need[0], need_gu
            )
        ctx.mods = None
        dx = dx.view(ctx.shape) if dx is not None else None
        return dx, None, None, None, None, *grads_gu, *grads_down


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _apply(function, x: torch.Tensor, mods: Sequence, *args):
    """``function.apply(x, mods, *args, A_1, B_1, ...)`` in the compute dtype (autocast's when on),
    with autocast off inside: the Functions cast for themselves."""
    dtype = _compute_dtype(x)
    adapters = [t for m in mods for t in (m.lora_A, m.lora_B)]
    with torch.autocast(x.device.type, enabled=False):
        return function.apply(x.to(dtype), tuple(mods), *args, *adapters)


def lora_projections(x: torch.Tensor, mods: Sequence) -> tuple[torch.Tensor, ...]:
    """The outputs of LoRA projections ``mods`` applied to ``x``."""
    return _apply(LoraProjectionsFunction, x, mods)


def lora_mlp(
    x: torch.Tensor, gate, up, down, act: int, packed=None, skip_output: bool = False
) -> torch.Tensor:
    """``down(act(gate(x)) * up(x))`` for three LoRA projections; ``act`` from ACTIVATION_IDS;
    ``packed``: (weight, bias) of gate and up stacked (`loris.models.packing`), or None;
    ``skip_output``: return an uncomputed placeholder, for callers that only back-propagate."""
    return _apply(LoraMLPFunction, x, (gate, up, down), act, packed, skip_output)


def lora_packed(x: torch.Tensor, mods: Sequence, weight: torch.Tensor, bias) -> torch.Tensor:
    """Concatenated outputs of LoRA projections whose base weights are stacked in ``weight``."""
    return _apply(LoraPackedFunction, x, mods, weight, bias)
