"""Llama (1, 2, 3, 3.1, 3.2; SmolLM2 and other Llama-architecture checkpoints)."""

from __future__ import annotations

from typing import Any

from loris.models.families.names import LLAMA_NORMS, standard_map
from loris.models.families.spec import FamilySpec
from loris.models.hf_fields import common_fields


def config_fields(hf) -> dict[str, Any]:
    bias = bool(getattr(hf, "attention_bias", False))
    return common_fields(hf, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(hf, "mlp_bias", False)))


SPEC = FamilySpec(
    model_type="llama",
    config_fields=config_fields,
    weight_map=lambda cfg: standard_map(cfg, LLAMA_NORMS),
    gguf_arch="llama",
    gguf_permuted_qk=True,
    gguf_rope_dimension=True,
)
