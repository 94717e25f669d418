"""Qwen2 / Qwen2.5: Llama's layout with q/k/v biases and optional sliding-window layers."""

from __future__ import annotations

from typing import Any

from loris.models.families.names import LLAMA_NORMS, standard_map
from loris.models.families.spec import FamilySpec
from loris.models.hf_fields import common_fields


def config_fields(hf) -> dict[str, Any]:
    return common_fields(hf, qkv_bias=True, sliding_window=hf.sliding_window)


SPEC = FamilySpec(
    model_type="qwen2",
    config_fields=config_fields,
    weight_map=lambda cfg: standard_map(cfg, LLAMA_NORMS),
    gguf_arch="qwen2",
    gguf_rope_dimension=True,
)
