"""Rotary-embedding tables (cos, sin) for every rope-scaling variant the supported families use.

Formulas follow the published methods (linear position interpolation, dynamic NTK, Llama-3.1's
frequency-band smoothing, YaRN, LongRoPE); tests check the tables against transformers' own.
"""

from __future__ import annotations

import math

import torch

from loris.models.config import RopeConfig


def _base_inv_freq(theta: float, dim: int, device: torch.device | None = None) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (theta**exponents)


def _llama3(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    old_len = rope.original_max_position_embeddings
    low, high = rope.low_freq_factor, rope.high_freq_factor
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(rope: RopeConfig, dim: int, max_pos: int, device) -> tuple[torch.Tensor, float]:
    base, factor = rope.theta, rope.factor
    original = rope.original_max_position_embeddings or max_pos

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = rope.attention_factor
    if attention is None:
        if rope.mscale and rope.mscale_all_dim:
            attention = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # share of the original (extrapolated) frequency per channel pair
    return interpolation * (1 - keep) + extrapolation * keep, float(attention)


def _longrope(rope: RopeConfig, dim: int, max_pos: int, seq_len: int, device) -> tuple[torch.Tensor, float]:
    original = rope.original_max_position_embeddings or max_pos
    factor = rope.factor if rope.factor != 1.0 else max_pos / original
    attention = rope.attention_factor
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = rope.long_factor if seq_len > original else rope.short_factor
    ext_t = torch.tensor(ext, dtype=torch.float32, device=device)
    shape = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (ext_t * rope.theta**shape), float(attention)


def inv_freq_for(
    rope: RopeConfig, head_dim: int, max_position_embeddings: int, seq_len: int, device=None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the cos/sin scale for sequences of up to ``seq_len`` positions."""
    dim = rope.rotary_dim or head_dim
    kind = rope.rope_type
    if kind == "default":
        return _base_inv_freq(rope.theta, dim, device), 1.0
    if kind == "linear":
        return _base_inv_freq(rope.theta, dim, device) / rope.factor, 1.0
    if kind == "dynamic":
        length = max(seq_len, max_position_embeddings)
        base = rope.theta * ((rope.factor * length / max_position_embeddings) - (rope.factor - 1)) ** (
            dim / (dim - 2)
        )
        return _base_inv_freq(base, dim, device), 1.0
    if kind == "llama3":
        return _llama3(_base_inv_freq(rope.theta, dim, device), rope), 1.0
    if kind == "yarn":
        return _yarn(rope, dim, max_position_embeddings, device)
    if kind == "longrope":
        return _longrope(rope, dim, max_position_embeddings, seq_len, device)
    raise ValueError(
        f"rope_type {kind!r} is not supported (default, linear, dynamic, llama3, yarn, longrope are)"
    )


def rope_cos_sin(
    rope: RopeConfig,
    head_dim: int,
    max_position_embeddings: int,
    position_ids: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (batch, seq, rotary_dim) for the given positions, computed in fp32."""
    seq_len = 0
    if rope.rope_type in ("dynamic", "longrope") and position_ids.numel():  # these depend on the length
        seq_len = int(position_ids.max().item()) + 1
    inv_freq, scale = inv_freq_for(rope, head_dim, max_position_embeddings, seq_len, position_ids.device)
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)
