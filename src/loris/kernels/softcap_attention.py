"""Attention with tanh logit soft-capping (Gemma 2) without a (queries x keys) score matrix.

SDPA cannot soft-cap, so the reference path materialises fp32 scores in every layer: at batch 4 x
2048 tokens and 8 heads that is 537 MB per layer, and several elementwise passes over it. On CUDA,
FlexAttention applies the cap as a score modification inside one fused kernel (forward and
backward) under a causal block mask, so nothing quadratic is stored. The reference
(`softcap_attention_reference`) is the math it is tested against and the path on CPU, for single
decoding queries, and wherever FlexAttention cannot compile (then a warning says so once).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from loris.kernels import kernels_disabled

logger = logging.getLogger(__name__)

_causal_masks: dict = {}
_flex_failed: list[str] = []


def softcap_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, softcap: float
) -> torch.Tensor:
    """``softmax(softcap * tanh(q k^T * scale / softcap) masked) v`` for (batch, heads, len, dim)
    inputs with grouped key/value heads; ``mask`` is a boolean (batch|1, 1, q, kv) or None (causal)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        lq, lk = scores.shape[-2:]
        q_idx = torch.arange(lk - lq, lk, device=q.device)[:, None]
        mask = torch.arange(lk, device=q.device)[None, :] <= q_idx
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return probs @ v


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _causal_block_mask(length: int, device: torch.device):
    """The causal BlockMask of a ``length``-token self-attention (made once per length)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (length, device)
    if key not in _causal_masks:

        def causal(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx

        _causal_masks[key] = create_block_mask(causal, None, None, length, length, device=device)
    return _causal_masks[key]


def flex_softcap_attention(q, k, v, scale: float, softcap: float, compiled: bool = True) -> torch.Tensor:
    """Causal soft-capped self-attention (as many queries as keys) through FlexAttention
    (``compiled=False``: its eager form, for tests). Lengths are padded to whole 128-token blocks:
    compiled FlexAttention gave wrong results for a 67-token sequence on an H200 (torch 2.11), right
    ones for 128. Padded keys come after every real query, so the causal mask hides them."""
    from torch.nn.attention.flex_attention import flex_attention

    def capped(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / softcap) * softcap

    n = q.shape[2]
    pad = -n % 128
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    block_mask = _causal_block_mask(n + pad, q.device)
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(q, k, v, score_mod=capped, block_mask=block_mask, scale=scale, enable_gqa=True)
    return out[:, :, :n] if pad else out


def softcap_attention(q, k, v, mask, scale: float, softcap: float) -> torch.Tensor:
    """Soft-capped attention: FlexAttention on CUDA for causal multi-token queries without a mask
    tensor (unpadded, unpacked training batches and prefills); else the reference. Padded or packed
    batches (a mask tensor) still take the reference: tensor masks through FlexAttention are not
    verified on a GPU yet."""
    self_attention = q.shape[2] == k.shape[2] > 1
    if mask is None and self_attention and q.is_cuda and not kernels_disabled() and not _flex_failed:
        try:
            return flex_softcap_attention(q, k, v, scale, softcap)
        except Exception as e:  # noqa: BLE001  (compilation can fail in many ways; the math cannot)
            _flex_failed.append(f"{type(e).__name__}: {e}")
            logger.warning(
                "FlexAttention could not run soft-capped attention (%s); using the plain path, which "
                "stores the full score matrix. Upgrading torch/triton usually fixes this.",
                _flex_failed[0][:300],
            )
    return softcap_attention_reference(q, k, v, mask, scale, softcap)
