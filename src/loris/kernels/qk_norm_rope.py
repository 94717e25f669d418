"""Per-head RMSNorm of q and k followed by rotary embedding, fused (Qwen3 / Gemma 3 ``q_norm``/``k_norm``).

Unfused, q and k are strided (B, L, H, D) views into the packed q|k|v projection: the norm copies each
to a contiguous tensor, normalises it, and rope reads and writes it again; backward takes two more
passes and as many launches. Here one program per (batch row, position) loads every head of q *and*
k once, normalises each head row in fp32, rounds as :func:`rms_norm_reference` does, scales by the
weight, rotates by that position's cos/sin (rotate-half, full rotary; tables may differ per batch
row) and writes contiguous (B, L, H, D) outputs, returned as (B, H, L, D) views for SDPA.

Backward saves the inputs as given (views, no copies), one fp32 ``1/rms`` per (b, l, head) and the
tables; it rotates the gradients back, rounds them to the norm's output dtype as autograd would on
the reference, and runs the RMSNorm backward per head. Norm weights get no gradient (frozen under
LoRA); anything needing one takes the reference path.
"""

from __future__ import annotations

import torch

from loris.kernels import use_triton
from loris.kernels.rms_norm import rms_norm, rms_norm_reference
from loris.kernels.rope import apply_rope, apply_rope_reference

try:  # triton is CUDA-only; the reference path must keep working without it
    import triton
    import triton.language as tl

    from loris.kernels.rope import load_cos_sin
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def qk_norm_rope_reference(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float, offset: float, cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """q: (B, L, Hq, D), k: (B, L, Hk, D), cos/sin: (B, L, D) -> (B, Hq, L, D), (B, Hk, L, D)."""
    qn = rms_norm_reference(q, q_weight, eps, offset).transpose(1, 2)
    kn = rms_norm_reference(k, k_weight, eps, offset).transpose(1, 2)
    return apply_rope_reference(qn, kn, cos, sin)


if triton is not None:

    @triton.jit
    def _halves(row, j, mask, HALF: tl.constexpr):
        """The first and second half of head rows (offsets ``j`` within a half) as fp32."""
        first = tl.load(row + j, mask=mask, other=0.0).to(tl.float32)
        return first, tl.load(row + HALF + j, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _fwd_heads(
        X, W, O, RSTD, sxb, sxl, sxh, b, pos, row, n_heads, eps, offset, c1, c2, s1, s2,
        CAST_BEFORE_WEIGHT: tl.constexpr, ROUND: tl.constexpr, HALF: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        """Normalise and rotate all heads of one position; store them and each head's 1/rms."""
        hv = tl.arange(0, BLOCK_H)
        h = hv[:, None]
        j = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < n_heads) & (j < HALF)
        x_row = X + b * sxb + pos * sxl + h * sxh
        x1, x2 = _halves(x_row, j, mask, HALF)
        w1, w2 = _halves(W, j, j < HALF, HALF)
        rstd = tl.math.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)
        tl.store(RSTD + row * n_heads + hv, rstd, mask=hv < n_heads)
        n1 = x1 * rstd[:, None]
        n2 = x2 * rstd[:, None]
        if CAST_BEFORE_WEIGHT:  # Llama/Qwen: round to the input dtype, then multiply by w
            y1 = w1 * n1.to(X.dtype.element_ty).to(tl.float32)
            y2 = w2 * n2.to(X.dtype.element_ty).to(tl.float32)
        else:  # Gemma: (offset + w) in fp32
            y1 = n1 * (offset + w1)
            y2 = n2 * (offset + w2)
        if ROUND:  # the norm's output is in the input dtype (not promoted to an fp32 weight's)
            y1 = y1.to(X.dtype.element_ty).to(tl.float32)
            y2 = y2.to(X.dtype.element_ty).to(tl.float32)
        o_row = O + (row * n_heads + h) * (2 * HALF)
        tl.store(o_row + j, (y1 * c1 - y2 * s1).to(O.dtype.element_ty), mask=mask)
        tl.store(o_row + HALF + j, (y2 * c2 + y1 * s2).to(O.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_heads(
        G, X, W, RSTD, DX, sgb, sgh, sgl, sxb, sxl, sxh, b, pos, row, n_heads, offset, c1, c2, s1, s2,
        CAST_BEFORE_WEIGHT: tl.constexpr, ROUND: tl.constexpr, HALF: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        """Rotate one position's output gradients back, then RMSNorm backward per head."""
        hv = tl.arange(0, BLOCK_H)
        h = hv[:, None]
        j = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < n_heads) & (j < HALF)
        g_row = G + b * sgb + pos * sgl + h * sgh
        g1, g2 = _halves(g_row, j, mask, HALF)
        gy1 = g1 * c1 + g2 * s2  # transpose of [[c1, -s1], [s2, c2]]
        gy2 = g2 * c2 - g1 * s1
        if ROUND:  # autograd hands the norm its output gradient in the norm's output dtype
            gy1 = gy1.to(X.dtype.element_ty).to(tl.float32)
            gy2 = gy2.to(X.dtype.element_ty).to(tl.float32)
        w1, w2 = _halves(W, j, j < HALF, HALF)
        if CAST_BEFORE_WEIGHT:  # the gradient crosses the cast to the input dtype
            gy1 = (gy1 * w1).to(X.dtype.element_ty).to(tl.float32)
            gy2 = (gy2 * w2).to(X.dtype.element_ty).to(tl.float32)
        else:
            gy1 = gy1 * (offset + w1)
            gy2 = gy2 * (offset + w2)
        x_row = X + b * sxb + pos * sxl + h * sxh
        rstd = tl.load(RSTD + row * n_heads + hv, mask=hv < n_heads, other=0.0)[:, None]
        x1, x2 = _halves(x_row, j, mask, HALF)
        n1, n2 = x1 * rstd, x2 * rstd
        dot = (tl.sum(gy1 * n1, axis=1) + tl.sum(gy2 * n2, axis=1))[:, None] / (2 * HALF)
        dx_row = DX + (row * n_heads + h) * (2 * HALF)
        tl.store(dx_row + j, (rstd * (gy1 - n1 * dot)).to(DX.dtype.element_ty), mask=mask)
        tl.store(dx_row + HALF + j, (rstd * (gy2 - n2 * dot)).to(DX.dtype.element_ty), mask=mask)

    @triton.jit
    def _qk_norm_rope_kernel(
        Q, K, WQ, WK, COS, SIN, QA, KA, RQ, RK, QB, KB,
        sqb, sql, sqh, skb, skl, skh, sab, sah, sal, skab, skah, skal,
        scb, scl, ssb, ssl, seq_len, n_q_heads, n_k_heads, eps, offset,
        BACKWARD: tl.constexpr, CAST_BEFORE_WEIGHT: tl.constexpr, ROUND_Q: tl.constexpr,
        ROUND_K: tl.constexpr, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
        BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        """Forward: QA/KA are the outputs. Backward: QA/KA are the output gradients (strided
        (B, H, L, D)) and QB/KB receive the input gradients. RQ/RK hold 1/rms per (b, l, head)."""
        row = tl.program_id(0).to(tl.int64)
        b = row // seq_len
        pos = row % seq_len
        c1, c2, s1, s2 = load_cos_sin(COS, SIN, b, pos, scb, scl, ssb, ssl, HALF, BLOCK_HALF)
        if BACKWARD:
            _bwd_heads(QA, Q, WQ, RQ, QB, sab, sah, sal, sqb, sql, sqh, b, pos, row, n_q_heads, offset,
                       c1, c2, s1, s2, CAST_BEFORE_WEIGHT, ROUND_Q, HALF, BLOCK_HQ, BLOCK_HALF)  # fmt: skip
            _bwd_heads(KA, K, WK, RK, KB, skab, skah, skal, skb, skl, skh, b, pos, row, n_k_heads, offset,
                       c1, c2, s1, s2, CAST_BEFORE_WEIGHT, ROUND_K, HALF, BLOCK_HK, BLOCK_HALF)  # fmt: skip
        else:
            _fwd_heads(Q, WQ, QA, RQ, sqb, sql, sqh, b, pos, row, n_q_heads, eps, offset, c1, c2, s1, s2,
                       CAST_BEFORE_WEIGHT, ROUND_Q, HALF, BLOCK_HQ, BLOCK_HALF)  # fmt: skip
            _fwd_heads(K, WK, KA, RK, skb, skl, skh, b, pos, row, n_k_heads, eps, offset, c1, c2, s1, s2,
                       CAST_BEFORE_WEIGHT, ROUND_K, HALF, BLOCK_HK, BLOCK_HALF)  # fmt: skip


def _launch(q, k, wq, wk, cos, sin, qa, ka, rq, rk, qb, kb, heads, eps, offset, rounds, backward) -> None:
    batch, seq_len, _, dim = q.shape
    if batch * seq_len == 0:
        return
    block_hq, block_hk = (triton.next_power_of_2(max(h, 1)) for h in heads)
    _qk_norm_rope_kernel[(batch * seq_len,)](
        q, k, wq, wk, cos, sin, qa, ka, rq, rk, qb, kb,
        *q.stride()[:3], *k.stride()[:3], *qa.stride()[:3], *ka.stride()[:3],
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), seq_len, heads[0], heads[1], eps, offset,
        BACKWARD=backward, CAST_BEFORE_WEIGHT=offset == 0.0, ROUND_Q=rounds[0], ROUND_K=rounds[1],
        HALF=dim // 2, BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_HALF=triton.next_power_of_2(dim // 2),
        num_warps=8 if max(block_hq, block_hk) * dim >= 4096 else 4,
    )  # fmt: skip


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class QKNormRopeFunction(torch.autograd.Function):
    """RMSNorm per head of q and k, then rope, in one launch each way; no weight gradients."""

    @staticmethod
    def forward(ctx, q, k, q_weight, k_weight, eps: float, offset: float, cos, sin):
        q, k, q_weight, k_weight = (_unit_last(t) for t in (q, k, q_weight, k_weight))
        batch, seq_len, _, dim = q.shape
        cos = _unit_last(cos.expand(batch, seq_len, dim))
        sin = _unit_last(sin.expand(batch, seq_len, dim))
        table = torch.promote_types(cos.dtype, sin.dtype)
        # The norm's output dtype as the reference gets it: promoted to the weight's in Llama order.
        norm_dtypes = [torch.promote_types(w.dtype, x.dtype) if offset == 0.0 else x.dtype
                       for x, w in ((q, q_weight), (k, k_weight))]  # fmt: skip
        outs = [torch.empty(x.shape, dtype=torch.promote_types(nd, table), device=x.device)
                for x, nd in zip((q, k), norm_dtypes, strict=True)]  # fmt: skip
        rstds = [torch.empty(x.shape[:3], dtype=torch.float32, device=x.device) for x in (q, k)]
        heads = (q.shape[2], k.shape[2])
        rounds = (norm_dtypes[0] == q.dtype, norm_dtypes[1] == k.dtype)
        q_out, k_out = (o.transpose(1, 2) for o in outs)  # (B, H, L, D) views, as SDPA takes them
        _launch(
            q, k, q_weight, k_weight, cos, sin, q_out, k_out, *rstds, q, k, heads, eps, offset, rounds, False
        )
        ctx.save_for_backward(q, k, q_weight, k_weight, *rstds, cos, sin)
        ctx.set_materialize_grads(False)  # an unused output arrives as None: no zeros to rotate
        ctx.eps, ctx.offset, ctx.rounds = eps, offset, rounds
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        q, k, q_weight, k_weight, rstd_q, rstd_k, cos, sin = ctx.saved_tensors
        do_q = dq_out is not None and ctx.needs_input_grad[0]
        do_k = dk_out is not None and ctx.needs_input_grad[1]
        # A skipped side runs with zero heads; its pointers are stand-ins that are never read or written.
        dq_out = _unit_last(dq_out) if do_q else q.transpose(1, 2)
        dk_out = _unit_last(dk_out) if do_k else k.transpose(1, 2)
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if do_q else q
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if do_k else k
        heads = (q.shape[2] if do_q else 0, k.shape[2] if do_k else 0)
        _launch(q, k, q_weight, k_weight, cos, sin, dq_out, dk_out, rstd_q, rstd_k, dq, dk,
                heads, ctx.eps, ctx.offset, ctx.rounds, True)  # fmt: skip
        return dq if do_q else None, dk if do_k else None, None, None, None, None, None, None


def qk_norm_rope_triton(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float, offset: float, cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The Triton path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU)."""
    return QKNormRopeFunction.apply(q, k, q_weight, k_weight, float(eps), float(offset), cos, sin)


def qk_norm_rope(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float, offset: float, cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """RMSNorm each head of q (B, L, Hq, D) and k, then rope; returns (B, H, L, D) q and k.

    One fused Triton kernel on CUDA; the separate norm and rope for trainable norm weights or rotary
    tables, partial rotary, or dtypes the kernel does not round like the reference (only fp32 / bf16
    / fp16)."""
    dim = q.shape[-1]
    fused = (
        use_triton(q)
        and not (q_weight.requires_grad or k_weight.requires_grad or cos.requires_grad or sin.requires_grad)
        and cos.shape[-1] == dim
        and dim % 2 == 0
        and all(t.dtype in _KERNEL_DTYPES for t in (q, k, q_weight, k_weight, cos, sin))
    )
    if fused:
        return qk_norm_rope_triton(q, k, q_weight, k_weight, eps, offset, cos, sin)
    # Unfused, each op still takes its own kernel where it can (full fine-tuning trains the norms).
    qn = rms_norm(q, q_weight, eps, offset).transpose(1, 2)
    kn = rms_norm(k, k_weight, eps, offset).transpose(1, 2)
    return apply_rope(qn, kn, cos, sin)
