"""`ModelConfig`: every quirk of a supported family as a field, parsed from a Hugging Face config.

The decoder reads only this dataclass; behaviour is keyed on fields, never on model names. Parsing goes
through transformers' own config class for the model type, so its defaults and the v4 → v5 renames
(`rope_scaling` → `rope_parameters`, `layer_types`) are applied exactly as transformers applies them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3", "phi3")


class UnsupportedModelError(ValueError):
    pass


@dataclass
class RopeConfig:
    """One rotary embedding: the base and its scaling (HF `rope_parameters` for one layer type)."""

    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | dynamic | llama3 | yarn | longrope
    factor: float = 1.0
    rotary_dim: int = 0  # 0 = the whole head
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    attention_factor: float | None = None  # yarn / longrope
    truncate: bool = True  # yarn
    short_factor: list[float] | None = None  # longrope
    long_factor: list[float] | None = None  # longrope


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    # projections
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # norms
    norm_offset: float = 0.0  # 1.0 for Gemma's (1 + w) RMSNorm
    qk_norm: bool = False  # Qwen3 / Gemma3: RMSNorm over each head of q and k
    sandwich_norms: bool = False  # Gemma 2/3: extra norms after attention and after the MLP
    # embedding / head
    embed_scale: float = 1.0  # sqrt(hidden_size) for Gemma
    tie_word_embeddings: bool = False
    final_logit_softcap: float | None = None
    # attention
    attn_scale: float | None = None  # None = 1/sqrt(head_dim)
    attn_logit_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: list[str] = field(default_factory=list)  # "full_attention" | "sliding_attention" per layer
    rope: RopeConfig = field(default_factory=RopeConfig)
    rope_local: RopeConfig | None = None  # used by sliding layers when set (Gemma 3)
    # mlp
    activation: str = "silu"  # silu | gelu_tanh
    # tokens
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    # the original HF config dict, kept so exports write back what came in
    hf_config: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.layer_types:
            kind = "sliding_attention" if self.sliding_window else "full_attention"
            self.layer_types = [kind] * self.num_layers
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"unsupported activation {self.activation!r}")

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention" and self.sliding_window is not None

    def rope_for_layer(self, layer: int) -> RopeConfig:
        if self.rope_local is not None and self.layer_types[layer] == "sliding_attention":
            return self.rope_local
        return self.rope

    @property
    def default_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.torch_dtype) if self.torch_dtype else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("hf_config")
        return d

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_hf(cls, hf: Any) -> ModelConfig:
        """From a transformers `PretrainedConfig`, a config dict, or a path to config.json / its folder."""
        hf = load_hf_config(hf)
        model_type = hf.model_type
        if model_type == "gemma3":  # multimodal wrapper: fine-tune its text tower
            hf = hf.get_text_config()
            model_type = hf.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(unsupported_message(model_type))
        return _PARSERS[model_type](hf)


def unsupported_message(model_type: str | None) -> str:
    return (
        f"loris does not support model_type={model_type!r}. Supported: "
        + ", ".join(t for t in SUPPORTED_MODEL_TYPES if t != "gemma3")
        + " (and gemma3's text tower). Open an issue with the model's config.json to ask for it."
    )


def load_hf_config(hf: Any):
    """Normalise any config source into transformers' config object for its model type."""
    from transformers import CONFIG_MAPPING, PretrainedConfig

    if isinstance(hf, PretrainedConfig):
        return hf
    if isinstance(hf, (str, Path)):
        path = Path(hf)
        if path.is_dir():
            path = path / "config.json"
        hf = json.loads(path.read_text())
    if not isinstance(hf, dict):
        raise TypeError(f"expected a config dict, path or PretrainedConfig, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(unsupported_message(model_type))
    kwargs = {k: v for k, v in hf.items() if k != "model_type"}
    return CONFIG_MAPPING[model_type](**kwargs)


def _rope_from_params(params: dict[str, Any] | None, head_dim: int) -> RopeConfig:
    params = dict(params or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "su":  # old name of longrope (Phi-3)
        rope_type = "longrope"
    partial = params.get("partial_rotary_factor", 1.0)
    rotary_dim = int(head_dim * partial)
    return RopeConfig(
        theta=float(params.get("rope_theta", 10000.0)),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0) or 1.0),
        rotary_dim=rotary_dim if rotary_dim != head_dim else 0,
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
        low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        beta_fast=params.get("beta_fast"),
        beta_slow=params.get("beta_slow"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        attention_factor=params.get("attention_factor"),
        truncate=params.get("truncate", True),
        short_factor=params.get("short_factor"),
        long_factor=params.get("long_factor"),
    )


def _head_dim(hf) -> int:
    return getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads


def _dtype_name(hf) -> str | None:
    dt = getattr(hf, "dtype", None) or getattr(hf, "torch_dtype", None)
    if dt is None:
        return None
    return str(dt).removeprefix("torch.")


def _common(hf, **overrides: Any) -> dict[str, Any]:
    head_dim = _head_dim(hf)
    fields: dict[str, Any] = dict(
        model_type=hf.model_type,
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim,
        max_position_embeddings=hf.max_position_embeddings,
        rms_norm_eps=hf.rms_norm_eps,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        rope=_rope_from_params(getattr(hf, "rope_parameters", None), head_dim),
        layer_types=list(getattr(hf, "layer_types", None) or []),
        bos_token_id=getattr(hf, "bos_token_id", None),
        eos_token_id=getattr(hf, "eos_token_id", None),
        pad_token_id=getattr(hf, "pad_token_id", None),
        torch_dtype=_dtype_name(hf),
        hf_config=hf.to_dict(),
    )
    fields.update(overrides)
    return fields


def _parse_llama(hf) -> ModelConfig:
    bias = bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        **_common(hf, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(hf, "mlp_bias", False)))
    )


def _parse_mistral(hf) -> ModelConfig:
    return ModelConfig(**_common(hf, sliding_window=getattr(hf, "sliding_window", None), layer_types=[]))


def _parse_qwen2(hf) -> ModelConfig:
    return ModelConfig(**_common(hf, qkv_bias=True, sliding_window=hf.sliding_window))


def _parse_qwen3(hf) -> ModelConfig:
    bias = bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        **_common(hf, qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=hf.sliding_window)
    )


def _gemma_common(hf) -> dict[str, Any]:
    bias = bool(getattr(hf, "attention_bias", False))
    return dict(
        qkv_bias=bias,
        o_bias=bias,
        norm_offset=1.0,
        sandwich_norms=True,
        embed_scale=math.sqrt(hf.hidden_size),
        attn_scale=hf.query_pre_attn_scalar**-0.5,
        attn_logit_softcap=getattr(hf, "attn_logit_softcapping", None),
        final_logit_softcap=getattr(hf, "final_logit_softcapping", None),
        sliding_window=hf.sliding_window,
        activation=_activation(getattr(hf, "hidden_activation", None) or hf.hidden_act),
    )


def _parse_gemma2(hf) -> ModelConfig:
    return ModelConfig(**_common(hf, **_gemma_common(hf)))


def _parse_gemma3(hf) -> ModelConfig:
    head_dim = _head_dim(hf)
    params = hf.rope_parameters
    return ModelConfig(
        **_common(
            hf,
            **_gemma_common(hf),
            qk_norm=True,
            rope=_rope_from_params(params["full_attention"], head_dim),
            rope_local=_rope_from_params(params["sliding_attention"], head_dim),
        )
    )


def _parse_phi3(hf) -> ModelConfig:
    params = dict(hf.rope_parameters or {})
    if params.get("rope_type") in ("longrope", "su"):
        params.setdefault("original_max_position_embeddings", hf.original_max_position_embeddings)
    head_dim = _head_dim(hf)
    return ModelConfig(
        **_common(
            hf,
            rope=_rope_from_params(params, head_dim),
            sliding_window=getattr(hf, "sliding_window", None),
            layer_types=[],
            activation=_activation(hf.hidden_act),
        )
    )


def _activation(name: str) -> str:
    if name == "silu":
        return "silu"
    if name in ("gelu_pytorch_tanh", "gelu_tanh"):
        return "gelu_tanh"
    raise UnsupportedModelError(f"activation {name!r} is not supported (silu, gelu_pytorch_tanh are)")


_PARSERS = {
    "llama": _parse_llama,
    "mistral": _parse_mistral,
    "qwen2": _parse_qwen2,
    "qwen3": _parse_qwen3,
    "gemma2": _parse_gemma2,
    "gemma3_text": _parse_gemma3,
    "phi3": _parse_phi3,
}
