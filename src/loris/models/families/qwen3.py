"""Qwen3 (dense): Llama's layout with an RMSNorm over each head of q and k."""

from __future__ import annotations

from typing import Any

from loris.models.families.names import LLAMA_NORMS, standard_map
from loris.models.families.spec import FamilySpec
from loris.models.hf_fields import common_fields


def config_fields(hf) -> dict[str, Any]:
    bias = bool(getattr(hf, "attention_bias", False))
    return common_fields(hf, qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=hf.sliding_window)


SPEC = FamilySpec(
    model_type="qwen3",
    config_fields=config_fields,
    weight_map=lambda cfg: standard_map(cfg, LLAMA_NORMS),
    gguf_arch="qwen3",
    gguf_key_length=True,
    gguf_rope_dimension=True,
)
