"""Rotary-embedding tables (cos, sin) for every rope-scaling variant the supported families use.

Formulas follow the published methods (linear position interpolation, dynamic NTK, Llama-3.1's
frequency-band smoothing, YaRN, LongRoPE); tests check the tables against transformers' own.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from loris.models.config import ModelConfig, RopeConfig


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


# ---- context length: what `from_pretrained(max_seq_length=..., rope_scaling=...)` changes ------------

_USER_ROPE_TYPES = ("linear", "dynamic")


def _hf_rope_entry(cfg: ModelConfig) -> dict | None:
    """The ``rope_parameters`` dict of ``cfg.hf_config`` that describes ``cfg.rope`` (Gemma 3 nests one
    per layer type; its ``full_attention`` entry is the global rope), or None when absent."""
    params = cfg.hf_config.get("rope_parameters")
    if not isinstance(params, dict):
        return None
    if isinstance(params.get("full_attention"), dict):
        return params["full_attention"]
    return params


def _set_rope(cfg: ModelConfig, rope: RopeConfig) -> None:
    """Replace the global rope and write the same scaling into the HF config kept for exports."""
    cfg.rope = rope
    entry = _hf_rope_entry(cfg)
    if entry is None:
        entry = cfg.hf_config.setdefault("rope_parameters", {"rope_theta": rope.theta})
    entry.pop("type", None)
    entry.update(rope_type=rope.rope_type, factor=rope.factor)


def set_rope_scaling(cfg: ModelConfig, rope_scaling: dict) -> RopeConfig:
    """Apply a user's ``rope_scaling`` (``{"type" or "rope_type": "linear" | "dynamic", "factor": f}``)
    to the model's global rope, replacing whatever scaling it had."""
    if not isinstance(rope_scaling, dict):
        raise TypeError(
            f"rope_scaling must be a dict such as {{'type': 'linear', 'factor': 2.0}}, got {rope_scaling!r}"
        )
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    factor = rope_scaling.get("factor")
    if kind not in _USER_ROPE_TYPES:
        raise ValueError(
            f"rope_scaling type {kind!r} is not supported here; use {{'type': 'linear', 'factor': f}} or "
            "{'type': 'dynamic', 'factor': f}, or leave rope_scaling=None to keep the model's own."
        )
    if not isinstance(factor, (int, float)) or factor < 1.0:
        raise ValueError(f"rope_scaling factor must be a number >= 1.0, got {factor!r}")
    rope = dataclasses.replace(cfg.rope, rope_type=kind, factor=float(factor))
    _set_rope(cfg, rope)
    return rope


def extend_context(cfg: ModelConfig, max_seq_length: int) -> float | None:
    """Stretch RoPE linearly so ``max_seq_length`` positions fit in the trained range (as Unsloth does).

    When ``max_seq_length`` exceeds ``max_position_embeddings`` the rotary frequencies are divided by
    ``max_seq_length / max_position_embeddings`` (position interpolation; an existing linear factor
    is multiplied), and ``max_position_embeddings`` becomes ``max_seq_length``, so reloading an export
    with the same ``max_seq_length`` does not stretch it twice. Returns the factor applied, or None.
    Models whose rope already uses another scaling (llama3, yarn, longrope, dynamic) keep it.
    """
    old = cfg.max_position_embeddings
    if not max_seq_length or max_seq_length <= old:
        return None
    if cfg.rope.rope_type not in ("default", "linear"):
        return None
    factor = max_seq_length / old
    base = cfg.rope.factor if cfg.rope.rope_type == "linear" else 1.0
    rope = dataclasses.replace(cfg.rope, rope_type="linear", factor=base * factor)
    _set_rope(cfg, rope)
    cfg.max_position_embeddings = max_seq_length
    cfg.hf_config["max_position_embeddings"] = max_seq_length
    return factor
