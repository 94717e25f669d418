"""Attention with a learned sink per head (gpt-oss): one more logit in every softmax denominator.

Each query head ``h`` has a sink logit ``s_h``; attention weights are
``exp(l_j) / (exp(s_h) + Σ_j exp(l_j))``, so a head may put weight on "nothing". Nothing is read
from the sink (it has no value).

SDPA takes no per-head extra logit, so `sink_attention` gives it one more key: every query gets an
extra feature ``s_h / scale`` and every key a 0 there; the added key is 0 everywhere except a 1 in
that feature, and its value is 0 (q and k are padded with zeros to a multiple of 8 features, which
SDPA's memory-efficient CUDA kernel needs). Its logit is then exactly ``s_h`` and the real logits are
unchanged. The mask stays a boolean (batch|1, 1, q, kv + 1) one (no per-head float mask), and
SDPA's fused kernels run as for any model. `sink_attention_reference` is the definition, written
out with fp32 scores; the tests compare the two, and the model against transformers' eager
gpt-oss attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bool_mask(mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """``mask`` (batch|1, 1, q, kv), or the causal one of the last ``q_len`` positions when None."""
    if mask is not None:
        return mask.bool()
    q_idx = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    return (torch.arange(kv_len, device=device)[None, :] <= q_idx)[None, None]


def sink_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    sinks: torch.Tensor,
) -> torch.Tensor:
    """``softmax([q k^T · scale (masked), sink]) v`` without the sink's column, for (batch, heads,
    len, dim) inputs with grouped key/value heads; ``mask`` is boolean (batch|1, 1, q, kv) or None
    (causal)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    dt = torch.promote_types(q.dtype, torch.float32)  # fp32 scores for 16-bit inputs
    scores = (q.to(dt) @ k.to(dt).transpose(-1, -2)) * scale
    allowed = _bool_mask(mask, q.shape[2], k.shape[2], q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    sink = sinks.to(dt).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return (probs.to(v.dtype) @ v).to(q.dtype)


def sink_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    sinks: torch.Tensor,
) -> torch.Tensor:
    """`sink_attention_reference` through SDPA, with the sink as one extra key (see the module doc)."""
    b, h, n, d = q.shape
    kv_len = k.shape[2]
    extra = 8 - d % 8  # the sink feature plus zeros: q/k head size stays a multiple of 8 (fused kernels)
    sink_feature = (sinks.to(q.dtype) / scale).reshape(1, h, 1, 1).expand(b, h, n, 1)
    q = F.pad(torch.cat([q, sink_feature], dim=-1), (0, extra - 1))
    k = F.pad(k, (0, extra, 1, 0))  # a zero key in front, and zero features for every key
    k[:, :, 0, d] = 1.0
    v = F.pad(v, (0, 0, 1, 0))
    allowed = _bool_mask(mask, n, kv_len, q.device)
    allowed = F.pad(allowed, (1, 0), value=True)  # every query sees the sink
    if q.is_cuda and k.shape[1] != h:  # the memory-efficient kernel (masks, unequal v size) takes no GQA
        k, v = (t.repeat_interleave(h // k.shape[1], dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=True)
