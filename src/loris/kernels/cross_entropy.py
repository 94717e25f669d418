"""Causal-LM loss from hidden states: ``CE(softcap(h @ W^T), labels)``.

The fused path never materialises the full (tokens x vocab) logits; the reference does, and is
the definition the fused path must match: fp32 logits, optional tanh soft-capping
(``cap * tanh(z / cap)``, Gemma 2), ``ignore_index`` tokens excluded, mean over the counted tokens
(or a sum, when the caller normalises across gradient-accumulation steps itself).

The fused path gathers the counted tokens (ignored ones cost no GEMM work), walks them in chunks
sized from N, V and H, and for each chunk: one GEMM for fp32 logits, one Triton program per row for
an online log-sum-exp, the loss and d(loss)/d(logits) written over the logits, then two GEMMs that
add that chunk's share of grad_hidden and (fp32-accumulated) grad_weight. Everything is done in the
forward, as Liger does, so the chunk's logits die at once and backward only scales stored gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loris.kernels import use_triton

try:  # triton is CUDA-only; the reference path must keep working without it
    import triton
    import triton.language as tl

    from loris.kernels.activations import tanh_f32
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

_MIB = 1 << 20


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """hidden: (N, H), weight: (V, H), labels: (N,) already shifted."""
    logits = (hidden @ weight.t()).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)


if triton is not None:

    @triton.jit
    def _softcapped(z, softcap, HAS_SOFTCAP: tl.constexpr):
        if HAS_SOFTCAP:
            z = softcap * tanh_f32(z / softcap)
        return z

    @triton.jit
    def _ce_rows_kernel(
        Z, GRAD, LABELS, LOSS, stride_z, stride_g, n_cols, ignore_index, softcap, grad_scale,
        HAS_SOFTCAP: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Loss and (scaled) d loss / d logits of one row, reading its fp32 logits twice."""
        row = tl.program_id(0).to(tl.int64)
        z_row = Z + row * stride_z
        cols = tl.arange(0, BLOCK)
        label = tl.load(LABELS + row).to(tl.int64)
        ignored = label == ignore_index
        # pass 1: running max and sum of exp(z - max), one block of the vocabulary at a time
        m = float("-inf")
        d = 0.0
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            z = _softcapped(tl.load(z_row + c, mask=mask, other=0.0), softcap, HAS_SOFTCAP)
            z = tl.where(mask, z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=0))
            d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(d)
        z_label = _softcapped(tl.load(z_row + tl.where(ignored, 0, label)), softcap, HAS_SOFTCAP)
        tl.store(LOSS + row, tl.where(ignored, 0.0, lse - z_label))
        if COMPUTE_GRAD:
            # pass 2: softmax - onehot, through the soft-cap's derivative, scaled for the reduction
            scale = tl.where(ignored, 0.0, grad_scale)
            g_row = GRAD + row * stride_g
            for start in range(0, n_cols, BLOCK):
                c = start + cols
                mask = c < n_cols
                z = tl.load(z_row + c, mask=mask, other=0.0)
                if HAS_SOFTCAP:
                    t = tanh_f32(z / softcap)
                    g = (tl.exp(softcap * t - lse) - tl.where(c == label, 1.0, 0.0)) * (1.0 - t * t)
                else:
                    g = tl.exp(z - lse) - tl.where(c == label, 1.0, 0.0)
                tl.store(g_row + c, (g * scale).to(GRAD.dtype.element_ty), mask=mask)


_OUT_DTYPE_GEMM: dict[str, bool] = {}  # device type -> whether mm/addmm take out_dtype (torch >= 2.8, CUDA)


def _gemm_f32(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (or ``acc += a @ b``) with an fp32 result from half inputs, without an fp32 copy of
    either operand: cuBLAS writes fp32 directly where torch supports ``out_dtype``."""
    if a.dtype == torch.float32:
        return torch.mm(a, b) if acc is None else acc.addmm_(a, b)
    key = a.device.type
    if _OUT_DTYPE_GEMM.get(key, a.is_cuda):
        try:
            if acc is None:
                return torch.mm(a, b, out_dtype=torch.float32)
            return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        except (RuntimeError, TypeError, NotImplementedError):
            _OUT_DTYPE_GEMM[key] = False
    return torch.mm(a, b).float() if acc is None else acc.add_(torch.mm(a, b))


def _chunk_rows(n_rows: int, vocab: int, hidden: int, itemsize: int) -> int:
    """Rows per chunk: the chunk's fp32 logits (+ a half-precision gradient copy) take about as much
    memory as the hidden states already do, at least 256 MiB (GEMMs stay large) and at most 1 GiB."""
    per_row = vocab * (4 + (itemsize if itemsize != 4 else 0))
    budget = min(max(n_rows * hidden * itemsize, 256 * _MIB), 1024 * _MIB)
    rows = max(1, budget // per_row)
    if rows >= 128:
        rows -= rows % 64  # keep GEMM tiles whole
    return int(min(rows, max(n_rows, 1)))


def _rows_launch(vocab: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(vocab), 4096)
    return block, (8 if block >= 2048 else 4)


def _fused_linear_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    softcap: float | None,
    reduction: str,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    chunk_rows: int | None = None,
    compact: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Loss, grad_hidden and grad_weight of ``CE(softcap(h @ W^T), labels)`` chunk by chunk."""
    n_rows, n_hidden = hidden.shape
    vocab = weight.shape[0]
    valid = labels != ignore_index
    n_valid, n_bad = torch.stack([valid.sum(), (valid & ((labels < 0) | (labels >= vocab))).sum()]).tolist()
    if n_bad:
        raise ValueError(
            f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}; {n_bad} do not"
        )
    if compact and n_valid < n_rows:  # ignored tokens (prompts, padding) never reach a GEMM
        rows_idx = valid.nonzero().squeeze(1)
        h_src, y_src = hidden.index_select(0, rows_idx), labels.index_select(0, rows_idx)
    else:
        rows_idx, h_src, y_src = None, hidden, labels
    y_src = y_src.contiguous()
    m = h_src.shape[0]
    chunk = chunk_rows or _chunk_rows(m, vocab, n_hidden, hidden.element_size())
    # Chunks made only of ignored tokens (possible without compaction) are skipped outright.
    counts = valid.cumsum(0)[
        torch.arange(chunk - 1, m + chunk - 1, chunk, device=labels.device).clamp_max(m - 1)
    ]
    chunk_has_valid = torch.diff(counts, prepend=counts.new_zeros(1)).gt(0).tolist() if m else []
    if rows_idx is not None:
        chunk_has_valid = [True] * len(chunk_has_valid)

    grad_scale = 1.0 / n_valid if reduction == "mean" and n_valid > 0 else 1.0
    loss_rows = torch.zeros(m, dtype=torch.float32, device=hidden.device)
    grad_h = torch.zeros(m, n_hidden, dtype=hidden.dtype, device=hidden.device) if need_grad_hidden else None
    grad_w = (
        torch.zeros(vocab, n_hidden, dtype=torch.float32, device=hidden.device) if need_grad_weight else None
    )
    compute_grad = need_grad_hidden or need_grad_weight
    block, num_warps = _rows_launch(vocab)
    w_t = weight.t()
    for i, start in enumerate(range(0, m, chunk)):
        if not chunk_has_valid[i]:
            continue
        end = min(start + chunk, m)
        h_c = h_src[start:end]
        logits = _gemm_f32(h_c, w_t)  # (rows, V) fp32, the only vocab-sized buffer
        grad_logits = (
            logits
            if hidden.dtype == torch.float32 or not compute_grad
            else torch.empty_like(logits, dtype=hidden.dtype)
        )
        _ce_rows_kernel[(end - start,)](
            logits, grad_logits, y_src[start:end], loss_rows[start:end],
            logits.stride(0), grad_logits.stride(0), vocab, ignore_index,
            float(softcap) if softcap is not None else 1.0, grad_scale,
            HAS_SOFTCAP=softcap is not None, COMPUTE_GRAD=compute_grad, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
        del logits
        if need_grad_hidden:
            torch.mm(grad_logits, weight, out=grad_h[start:end])
        if need_grad_weight:
            _gemm_f32(grad_logits.t(), h_c, acc=grad_w)
        del grad_logits

    loss = loss_rows.sum()
    if reduction == "mean":
        loss = loss / n_valid  # 0 / 0 = nan when every token is ignored, as F.cross_entropy gives
    if grad_h is not None and rows_idx is not None:
        grad_h = hidden.new_zeros(hidden.shape).index_copy_(0, rows_idx, grad_h)
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    return loss, grad_h, grad_w


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Fused linear + cross-entropy; gradients are computed in forward and scaled in backward."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        ignore_index: int,
        softcap: float | None,
        reduction: str,
        chunk_rows: int | None,
        compact: bool,
    ) -> torch.Tensor:
        loss, grad_h, grad_w = _fused_linear_ce(
            hidden, weight, labels, ignore_index, softcap, reduction,
            need_grad_hidden=ctx.needs_input_grad[0], need_grad_weight=ctx.needs_input_grad[1],
            chunk_rows=chunk_rows, compact=compact,
        )  # fmt: skip
        ctx.grad_hidden, ctx.grad_weight = grad_h, grad_w
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.grad_hidden, ctx.grad_weight
        if not bool(grad_loss == 1.0):  # the usual loss.backward() needs no extra pass over dW
            grad_h = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
            grad_w = grad_w * grad_loss.to(grad_w.dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None, None, None


def linear_cross_entropy_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
    chunk_rows: int | None = None,
    compact: bool = True,
) -> torch.Tensor:
    """The fused path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU).

    ``chunk_rows`` overrides the chunk size; ``compact=False`` keeps ignored tokens in the chunks
    (the kernel then masks them), which tests use to cover that path.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' for the fused path, got {reduction!r}")
    return LinearCrossEntropyFunction.apply(
        hidden, weight, labels, ignore_index, softcap, reduction, chunk_rows, compact
    )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Loss of a linear head without keeping the logits; Triton on CUDA, the reference elsewhere."""
    if (
        use_triton(hidden)
        and reduction in ("mean", "sum")
        and hidden.dim() == 2
        and hidden.dtype == weight.dtype
        and hidden.shape[0] > 0
    ):
        return linear_cross_entropy_triton(
            hidden, weight, labels, ignore_index=ignore_index, softcap=softcap, reduction=reduction
        )
    return linear_cross_entropy_reference(
        hidden, weight, labels, ignore_index=ignore_index, softcap=softcap, reduction=reduction
    )
