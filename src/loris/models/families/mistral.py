"""Mistral: Llama's layout with a sliding window over every layer (llama.cpp runs it as "llama")."""

from __future__ import annotations

from typing import Any

from loris.models.families.names import LLAMA_NORMS, standard_map
from loris.models.families.spec import FamilySpec
from loris.models.hf_fields import common_fields


def config_fields(hf) -> dict[str, Any]:
    return common_fields(hf, sliding_window=getattr(hf, "sliding_window", None), layer_types=[])


SPEC = FamilySpec(
    model_type="mistral",
    config_fields=config_fields,
    weight_map=lambda cfg: standard_map(cfg, LLAMA_NORMS),
    gguf_arch="llama",
    gguf_load_arches=("mistral",),
    gguf_permuted_qk=True,
    gguf_rope_dimension=True,
)
