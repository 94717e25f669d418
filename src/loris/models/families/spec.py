"""`FamilySpec`: everything family-specific about a model family, in one declaration.

Each supported family has one module in this package defining its spec: how its Hugging Face
config becomes `ModelConfig` fields, its HF weight names, and its GGUF form (architecture name,
tensor-layout conventions, the hyper-parameters llama.cpp reads, and what a GGUF file's metadata
says back). The loader, the PEFT format, the HF and GGUF exporters and the GGUF reader look the
family up here and keep no family tables of their own. Chat templates (and their Ollama forms) are
keyed by template, not by family (`loris.data.registry`, `loris.export.ollama`): a fine-tuned model
keeps whatever template it was trained with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loris.models.families.names import WeightMap

if TYPE_CHECKING:  # pragma: no cover
    from loris.models.config import ModelConfig

GGUFField = Callable[[str, Any], Any]
"""Reads ``<architecture>.<key>`` from a GGUF file's metadata: ``field(key, default)``."""


@dataclass(frozen=True)
class FamilySpec:
    model_type: str
    """transformers' ``model_type`` of the checkpoints this family loads."""
    config_fields: Callable[[Any], dict[str, Any]]
    """transformers config object → `ModelConfig` fields (usually `common_fields` plus overrides)."""
    weight_map: Callable[[ModelConfig], WeightMap]
    """HF name templates → loris names, for this config's options (biases, q/k norms)."""
    gguf_arch: str
    """GGUF ``general.architecture`` written on export (llama.cpp's name for the family)."""
    gguf_load_arches: tuple[str, ...] = ()
    """GGUF architectures loaded as this family (default: ``gguf_arch``)."""
    gguf_permuted_qk: bool = False
    """llama.cpp interleaves the Q/K rows of this architecture for its RoPE."""
    gguf_norm_plus_one: bool = False
    """GGUF stores the RMSNorm weights as ``1 + w`` (Gemma), with Gemma's four norm names."""
    gguf_key_length: bool = False
    """Always write the key/value head length (else only when it differs from hidden / heads)."""
    gguf_rope_dimension: bool = False
    """Write ``rope.dimension_count``."""
    gguf_metadata: Callable[[Any, ModelConfig, Callable[[str], None]], None] | None = None
    """The family's own GGUF hyper-parameters ``(writer, cfg, warn)``; None: a sliding window, if
    the config has one, is not representable and is warned about."""
    gguf_config: Callable[[GGUFField, int], dict[str, Any]] | None = None
    """HF config entries read back from a GGUF file's metadata ``(field, head_dim)``."""
    gguf_tensor_names: dict[str, str] = field(default_factory=dict)
    """GGUF block tensor kinds that map to another HF module than usual (Phi-3's fused ``ffn_up``)."""
    wrapper_model_types: tuple[str, ...] = ()
    """``model_type``s of multimodal wrappers whose text tower is this family (loaded as it)."""

    @property
    def load_arches(self) -> tuple[str, ...]:
        return self.gguf_load_arches or (self.gguf_arch,)
