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

from loris.models.families import FAMILIES, family_spec
from loris.models.hf_fields import MoEConfig, RopeConfig, UnsupportedModelError

__all__ = ["ModelConfig", "MoEConfig", "RopeConfig", "SUPPORTED_MODEL_TYPES", "UnsupportedModelError"]

SUPPORTED_MODEL_TYPES = tuple(
    t for spec in FAMILIES.values() for t in (spec.model_type, *spec.wrapper_model_types)
)


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
    attn_sinks: bool = False  # gpt-oss: a learned logit per head in every softmax denominator
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
    moe: MoEConfig | None = None  # Mixture-of-Experts feed-forward (None: dense)
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

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and self.moe.is_sparse(layer)

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
        if model_type not in FAMILIES and model_type in SUPPORTED_MODEL_TYPES:
            hf = hf.get_text_config()  # a multimodal wrapper (Gemma 3): fine-tune its text tower
            model_type = hf.model_type
        if model_type not in FAMILIES:
            raise UnsupportedModelError(unsupported_message(model_type))
        return cls(**family_spec(model_type).config_fields(hf))


def unsupported_message(model_type: str | None) -> str:
    return (
        f"loris does not support model_type={model_type!r}. Supported: "
        + ", ".join(FAMILIES)
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
