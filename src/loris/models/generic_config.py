"""`GenericConfig`: what loris reads of a model it runs through transformers (`loris.models.generic`).

Kept apart from the wrapper so the family name maps (`loris.models.families`) can name it without
importing the model code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loris.models.hf_fields import RopeConfig

INDEX = re.compile(r"(?<=\.)\d+(?=\.)")
"""A layer (or expert) index inside a tensor name."""


@dataclass
class GenericConfig:
    """What loris reads of a model it runs through transformers (the fields `ModelConfig` shares)."""

    model_type: str
    vocab_size: int
    num_layers: int
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    logit_scale: float = 1.0
    """Logits = ``logit_scale * lm_head(h)`` (Granite divides by ``logits_scaling``, Cohere multiplies
    by ``logit_scale``)."""
    final_logit_softcap: float | None = None
    rope_type: str = "default"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    weight_names: tuple[str, ...] = ()
    """The model's tensor names with layer (and expert) indices as ``{}``: the identity name map."""
    hf_config: dict[str, Any] = field(default_factory=dict, repr=False)

    def rope_for_layer(self, layer: int) -> RopeConfig:
        return RopeConfig(rope_type=self.rope_type)

    def identity_map(self) -> dict[str, str]:
        return {name: name for name in self.weight_names}

    @classmethod
    def from_hf(cls, hf, raw: dict[str, Any], names: list[str]) -> GenericConfig:
        text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
        scale = 1.0
        if getattr(text, "logits_scaling", None):
            scale = 1.0 / float(text.logits_scaling)
        elif getattr(text, "logit_scale", None) is not None:
            scale = float(text.logit_scale)
        rope = getattr(text, "rope_parameters", None) or {}
        if rope and all(isinstance(v, dict) for v in rope.values()):  # one entry per layer type
            rope = next(iter(rope.values()))
        return cls(
            model_type=str(raw.get("model_type") or text.model_type),
            vocab_size=int(text.vocab_size),
            num_layers=int(getattr(text, "num_hidden_layers", 0) or 0),
            max_position_embeddings=getattr(text, "max_position_embeddings", None),
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            logit_scale=scale,
            final_logit_softcap=getattr(text, "final_logit_softcapping", None),
            rope_type=str(rope.get("rope_type", rope.get("type", "default"))) if rope else "default",
            bos_token_id=getattr(text, "bos_token_id", None),
            eos_token_id=getattr(text, "eos_token_id", None),
            pad_token_id=getattr(text, "pad_token_id", None),
            torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
            weight_names=tuple(dict.fromkeys(INDEX.sub("{}", n) for n in names)),
            hf_config=raw,
        )
