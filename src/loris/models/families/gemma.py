"""Gemma 2 and Gemma 3 (text): (1 + w) RMSNorms in a sandwich around attention and the MLP, a
scaled embedding, logit soft-capping (Gemma 2), q/k norms and a local RoPE for sliding layers
(Gemma 3). Gemma 3's multimodal checkpoints load as their text tower."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loris.models.families.names import GEMMA_NORMS, standard_map
from loris.models.families.spec import FamilySpec, GGUFField
from loris.models.hf_fields import activation_of, common_fields, head_dim_of, rope_from_params

if TYPE_CHECKING:  # pragma: no cover
    from loris.models.config import ModelConfig


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
        activation=activation_of(getattr(hf, "hidden_activation", None) or hf.hidden_act),
    )


def gemma2_fields(hf) -> dict[str, Any]:
    return common_fields(hf, **_gemma_common(hf))


def gemma3_fields(hf) -> dict[str, Any]:
    head_dim = head_dim_of(hf)
    params = hf.rope_parameters
    return common_fields(
        hf,
        **_gemma_common(hf),
        qk_norm=True,
        rope=rope_from_params(params["full_attention"], head_dim),
        rope_local=rope_from_params(params["sliding_attention"], head_dim),
    )


def gguf_metadata(writer, cfg: ModelConfig, warn: Callable[[str], None]) -> None:
    head_dim = cfg.head_dim
    if cfg.sliding_window:
        writer.add_sliding_window(cfg.sliding_window)
    if cfg.attn_logit_softcap is not None:
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcap)
    if cfg.final_logit_softcap is not None:
        writer.add_final_logit_softcapping(cfg.final_logit_softcap)
    scalar = cfg.hf_config.get("query_pre_attn_scalar")
    if scalar not in (None, head_dim, cfg.hidden_size // cfg.num_heads):
        warn(
            f"query_pre_attn_scalar={scalar} has no GGUF field: llama.cpp scales attention by "
            f"1/sqrt(head_dim={head_dim}) (or hidden/heads for 27B models)"
        )


def gemma3_gguf_metadata(writer, cfg: ModelConfig, warn: Callable[[str], None]) -> None:
    gguf_metadata(writer, cfg, warn)
    if cfg.rope_local is not None:
        writer.add_rope_freq_base_swa(cfg.rope_local.theta)
    writer.add_sliding_window_pattern([lt == "sliding_attention" for lt in cfg.layer_types])


def gguf_config(field: GGUFField, head_dim: int) -> dict[str, Any]:
    """What a Gemma GGUF leaves implicit: the attention scalar, the activation, the soft-caps."""
    cfg: dict[str, Any] = {"query_pre_attn_scalar": head_dim, "hidden_activation": "gelu_pytorch_tanh"}
    for src, dst in (
        ("attn_logit_softcapping", "attn_logit_softcapping"),
        ("final_logit_softcapping", "final_logit_softcapping"),
    ):
        cfg[dst] = field(src, None)
    return cfg


GEMMA2 = FamilySpec(
    model_type="gemma2",
    config_fields=gemma2_fields,
    weight_map=lambda cfg: standard_map(cfg, GEMMA_NORMS),
    gguf_arch="gemma2",
    gguf_norm_plus_one=True,
    gguf_key_length=True,
    gguf_metadata=gguf_metadata,
    gguf_config=gguf_config,
)

GEMMA3 = FamilySpec(
    model_type="gemma3_text",
    config_fields=gemma3_fields,
    weight_map=lambda cfg: standard_map(cfg, GEMMA_NORMS),
    gguf_arch="gemma3",
    gguf_norm_plus_one=True,
    gguf_key_length=True,
    gguf_metadata=gemma3_gguf_metadata,
    gguf_config=gguf_config,
    wrapper_model_types=("gemma3",),
)
