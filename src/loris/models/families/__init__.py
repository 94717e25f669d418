"""The supported model families, one module each, and the HF ↔ loris weight-name mapper.

A family is one `FamilySpec` (see `loris.models.families.spec`) in its own module here, listed in
`FAMILIES`; adding a family means adding that module, its line below, and its parity test
(tests/models/test_parity.py), nothing else. `NameMapper` resolves concrete HF names to loris names
(and back) through the family's weight map; the same maps convert back for saving and for PEFT key
names.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from loris.models.families import gemma, gpt_oss, llama, mistral, phi3, qwen2, qwen3, qwen3_moe
from loris.models.families.names import Split, Stacked, WeightMap
from loris.models.families.spec import FamilySpec
from loris.models.generic_config import GenericConfig
from loris.models.hf_fields import UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    from loris.models.config import ModelConfig

__all__ = [
    "FAMILIES",
    "FamilySpec",
    "IGNORED_HF_KEYS",
    "NameMapper",
    "Split",
    "Stacked",
    "WeightMap",
    "family_spec",
]

FAMILIES: dict[str, FamilySpec] = {
    spec.model_type: spec
    for spec in (
        llama.SPEC,
        mistral.SPEC,
        qwen2.SPEC,
        qwen3.SPEC,
        qwen3_moe.SPEC,
        gpt_oss.SPEC,
        gemma.GEMMA2,
        gemma.GEMMA3,
        phi3.SPEC,
    )
}
"""Every supported family by transformers' ``model_type``, in the order error messages list them."""


def family_spec(model_type: str | None) -> FamilySpec:
    """The spec of ``model_type`` (a multimodal wrapper's gives its text tower's)."""
    spec = FAMILIES.get(model_type) or next(
        (s for s in FAMILIES.values() if model_type in s.wrapper_model_types), None
    )
    if spec is None:
        raise UnsupportedModelError(f"loris does not support model_type={model_type!r}")
    return spec


def weight_map(cfg: ModelConfig | GenericConfig) -> WeightMap:
    """The HF → loris name map for this config's family and options (the identity on the generic
    path, whose modules keep transformers' names)."""
    if isinstance(cfg, GenericConfig):
        return cfg.identity_map()
    return family_spec(cfg.model_type).weight_map(cfg)


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


class NameMapper:
    """Resolves concrete HF names to loris names (and back) through a `WeightMap`."""

    def __init__(self, cfg: ModelConfig, hf_prefix: str = ""):
        self.cfg = cfg
        self.map = weight_map(cfg)
        self.prefix = hf_prefix
        self._patterns = [(_template_regex(k), v) for k, v in self.map.items()]
        reverse = {}
        for k, v in self.map.items():
            if isinstance(v, str) and v not in reverse:
                reverse[v] = k
        self._reverse = [(_template_regex(k), v) for k, v in reverse.items()]

    def to_loris(self, hf_name: str) -> str | Split | Stacked | None:
        name = hf_name.removeprefix(self.prefix) if self.prefix else hf_name
        for pattern, target in self._patterns:
            m = pattern.match(name)
            if m:
                if isinstance(target, Split):
                    return Split(tuple(t.format(*m.groups()) for t in target.targets), target.sizes)
                if isinstance(target, Stacked):
                    layer, expert = m.groups()
                    return Stacked(target.target.format(layer), target.part, int(expert))
                return target.format(*m.groups())
        return None

    def to_hf(self, loris_name: str) -> str:
        """HF name of a loris parameter (the per-projection name even for fused families)."""
        for pattern, target in self._reverse:
            m = pattern.match(loris_name)
            if m:
                return target.format(*m.groups())
        # fused families: fall back to transformers' unfused naming
        return "model." + loris_name.replace(".attn_norm.", ".input_layernorm.").replace(
            ".mlp_norm.", ".post_attention_layernorm."
        )

    def convert(self, hf_name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """One HF tensor → the loris tensors it becomes (several for a fused projection)."""
        target = self.to_loris(hf_name)
        if target is None:
            return []
        if isinstance(target, Split):
            return list(zip(target.targets, torch.split(tensor, target.sizes(self.cfg), dim=0), strict=True))
        if isinstance(target, Stacked):
            raise ValueError(f"{hf_name} is one expert's slice: place it with loading.place_expert")
        return [(target, tensor)]


# Tensors a checkpoint may carry that the model rebuilds itself.
IGNORED_HF_KEYS = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias$)")
