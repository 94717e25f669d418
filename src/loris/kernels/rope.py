"""Rotary position embedding applied to q and k (rotate-half convention, as transformers uses).

``cos``/``sin`` are precomputed per position by :mod:`loris.models.rope` for every rope-scaling
variant, shaped ``(batch, seq, rotary_dim)``. When ``rotary_dim < head_dim`` (partial rotary, e.g.
Phi-4-mini) only the leading ``rotary_dim`` channels rotate.

The Triton path runs one program per (batch row, position) that rotates every head of q *and* k in
one launch, reading that position's cos/sin once (they may differ per batch row: padded or packed
batches); the pass-through channels are copied. Backward applies the transposed rotation (rotation
by -theta) to the incoming gradients, so nothing but cos/sin is saved. Any layout whose last
dimension is contiguous works without a copy, e.g. q as a (B, L, H, D) projection viewed (B, H, L, D).
"""

from __future__ import annotations

import torch

from loris.kernels import use_triton

try:  # triton is CUDA-only; the reference path must keep working without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_one(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: (B, Hq, L, D), k: (B, Hk, L, D), cos/sin: (B, L, rotary_dim) in q's dtype."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return _rope_one(q, cos, sin), _rope_one(k, cos, sin)


if triton is not None:

    @triton.jit
    def _rotate_heads(
        X, O, sxb, sxh, sxl, sob, soh, sol, b, pos, n_heads, c1, c2, s1, s2,
        HALF: tl.constexpr, ROT: tl.constexpr, DIM: tl.constexpr, BACKWARD: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
    ):  # fmt: skip
        """Rotate all heads of one position; forward by theta, or backward by the transpose."""
        h = tl.arange(0, BLOCK_H)[:, None]
        j = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < n_heads) & (j < HALF)
        x_row = X + b * sxb + pos * sxl + h * sxh
        o_row = O + b * sob + pos * sol + h * soh
        x1 = tl.load(x_row + j, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + HALF + j, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:  # transpose of [[c1, -s1], [s2, c2]]
            o1 = x1 * c1 + x2 * s2
            o2 = x2 * c2 - x1 * s1
        else:
            o1 = x1 * c1 - x2 * s1
            o2 = x2 * c2 + x1 * s2
        tl.store(o_row + j, o1.to(O.dtype.element_ty), mask=mask)
        tl.store(o_row + HALF + j, o2.to(O.dtype.element_ty), mask=mask)
        if ROT < DIM:  # partial rotary: the trailing channels pass through unchanged
            p = tl.arange(0, BLOCK_PASS)[None, :]
            pmask = (h < n_heads) & (p < DIM - ROT)
            xp = tl.load(x_row + ROT + p, mask=pmask, other=0.0)
            tl.store(o_row + ROT + p, xp.to(O.dtype.element_ty), mask=pmask)

    @triton.jit
    def load_cos_sin(
        COS, SIN, b, pos, scb, scl, ssb, ssl, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr
    ):  # fmt: skip
        """One position's cos and sin as fp32 (1, BLOCK_HALF) rows: first and second half each."""
        j = tl.arange(0, BLOCK_HALF)[None, :]
        jm = j < HALF
        c1 = tl.load(COS + b * scb + pos * scl + j, mask=jm, other=0.0).to(tl.float32)
        c2 = tl.load(COS + b * scb + pos * scl + HALF + j, mask=jm, other=0.0).to(tl.float32)
        s1 = tl.load(SIN + b * ssb + pos * ssl + j, mask=jm, other=0.0).to(tl.float32)
        s2 = tl.load(SIN + b * ssb + pos * ssl + HALF + j, mask=jm, other=0.0).to(tl.float32)
        return c1, c2, s1, s2

    @triton.jit
    def _rope_kernel(
        Q, K, COS, SIN, QO, KO,
        sqb, sqh, sql, skb, skh, skl, sqob, sqoh, sqol, skob, skoh, skol,
        scb, scl, ssb, ssl, seq_len, n_q_heads, n_k_heads,
        HALF: tl.constexpr, ROT: tl.constexpr, DIM: tl.constexpr, BACKWARD: tl.constexpr,
        BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0).to(tl.int64)
        b = pid // seq_len
        pos = pid % seq_len
        c1, c2, s1, s2 = load_cos_sin(COS, SIN, b, pos, scb, scl, ssb, ssl, HALF, BLOCK_HALF)
        _rotate_heads(Q, QO, sqb, sqh, sql, sqob, sqoh, sqol, b, pos, n_q_heads, c1, c2, s1, s2,
                      HALF, ROT, DIM, BACKWARD, BLOCK_HQ, BLOCK_HALF, BLOCK_PASS)  # fmt: skip
        _rotate_heads(K, KO, skb, skh, skl, skob, skoh, skol, b, pos, n_k_heads, c1, c2, s1, s2,
                      HALF, ROT, DIM, BACKWARD, BLOCK_HK, BLOCK_HALF, BLOCK_PASS)  # fmt: skip


def _launch(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    q_out: torch.Tensor, k_out: torch.Tensor, backward: bool,
) -> None:  # fmt: skip
    batch, n_q_heads, seq_len, dim = q.shape
    n_k_heads = k.shape[1]
    rot = cos.shape[-1]
    if batch * seq_len == 0:
        return
    block_hq, block_hk = triton.next_power_of_2(max(n_q_heads, 1)), triton.next_power_of_2(max(n_k_heads, 1))
    num_warps = 8 if block_hq * rot >= 4096 else 4
    _rope_kernel[(batch * seq_len,)](
        q, k, cos, sin, q_out, k_out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), seq_len, n_q_heads, n_k_heads,
        HALF=rot // 2, ROT=rot, DIM=dim, BACKWARD=backward,
        BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_HALF=triton.next_power_of_2(max(rot // 2, 1)),
        BLOCK_PASS=triton.next_power_of_2(max(dim - rot, 1)), num_warps=num_warps,
    )  # fmt: skip


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


class RopeFunction(torch.autograd.Function):
    """Rotary embedding of q and k in one launch; backward rotates the gradients back."""

    @staticmethod
    def forward(
        ctx, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = _unit_last(q), _unit_last(k)
        batch, _, seq_len, _ = q.shape
        rot = cos.shape[-1]
        cos = _unit_last(cos.expand(batch, seq_len, rot))
        sin = _unit_last(sin.expand(batch, seq_len, rot))
        q_out = torch.empty_like(q, dtype=torch.promote_types(q.dtype, cos.dtype))
        k_out = torch.empty_like(k, dtype=torch.promote_types(k.dtype, cos.dtype))
        _launch(q, k, cos, sin, q_out, k_out, backward=False)
        ctx.save_for_backward(cos, sin)
        ctx.set_materialize_grads(False)  # an unused output arrives as None: no zeros to rotate
        ctx.dtypes = (q.dtype, k.dtype)
        ctx.heads = (q.shape[1], k.shape[1])
        return q_out, k_out

    @staticmethod
    def backward(
        ctx, dq: torch.Tensor | None, dk: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        dq = _unit_last(dq) if dq is not None else None
        dk = _unit_last(dk) if dk is not None else None
        if dq is None and dk is None:
            return None, None, None, None
        if dq is None:  # only k's output was used
            dq = torch.zeros(dk.shape[0], 0, *dk.shape[2:], dtype=dk.dtype, device=dk.device)
        if dk is None:
            dk = torch.zeros(dq.shape[0], 0, *dq.shape[2:], dtype=dq.dtype, device=dq.device)
        dq_in = torch.empty_like(dq, dtype=ctx.dtypes[0])
        dk_in = torch.empty_like(dk, dtype=ctx.dtypes[1])
        _launch(dq, dk, cos, sin, dq_in, dk_in, backward=True)
        # An unused output gets no gradient (a zero-head stand-in kept the launch uniform).
        return (
            dq_in if ctx.needs_input_grad[0] and dq_in.shape[1] == ctx.heads[0] else None,
            dk_in if ctx.needs_input_grad[1] and dk_in.shape[1] == ctx.heads[1] else None,
            None,
            None,
        )


def apply_rope_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU)."""
    return RopeFunction.apply(q, k, cos, sin)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k; Triton on CUDA, the reference elsewhere."""
    # cos/sin gradients (learned rotary tables) are the reference's job.
    if use_triton(q) and not (cos.requires_grad or sin.requires_grad) and cos.shape[-1] % 2 == 0:
        return apply_rope_triton(q, k, cos, sin)
    return apply_rope_reference(q, k, cos, sin)
