"""Per-family weight-name maps between Hugging Face checkpoints and loris' module tree.

Keys are HF name templates with ``{}`` for the layer index; values are loris names. A `Split`
value cuts one fused HF tensor (Phi-3's qkv_proj, gate_up_proj) into loris' separate projections,
with sizes derived from the config. The same maps convert back for saving and for PEFT key names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from loris.models.config import ModelConfig


@dataclass(frozen=True)
class Split:
    targets: tuple[str, ...]
    sizes: Callable[[ModelConfig], tuple[int, ...]]  # along dim 0


_ATTN = {
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.self_attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.self_attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.self_attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.self_attn.o_proj.weight",
}
_ATTN_BIAS = {k.replace(".weight", ".bias"): v.replace(".weight", ".bias") for k, v in _ATTN.items()}
_QKV_BIAS = {k: v for k, v in _ATTN_BIAS.items() if "o_proj" not in k}
_MLP = {
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
}
_MLP_BIAS = {k.replace(".weight", ".bias"): v.replace(".weight", ".bias") for k, v in _MLP.items()}
_ENDS = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LLAMA_NORMS = {
    "model.layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.weight",
}
# Gemma 2/3 name their four norms differently: "post_attention" is the norm *after* attention.
_GEMMA_NORMS = {
    "model.layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.attn_post_norm.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "layers.{}.mlp_norm.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "layers.{}.mlp_post_norm.weight",
}
_QK_NORMS = {
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.self_attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.self_attn.k_norm.weight",
}


def _qkv_sizes(cfg: ModelConfig) -> tuple[int, ...]:
    kv = cfg.num_kv_heads * cfg.head_dim
    return (cfg.num_heads * cfg.head_dim, kv, kv)


def _gate_up_sizes(cfg: ModelConfig) -> tuple[int, ...]:
    return (cfg.intermediate_size, cfg.intermediate_size)


_PHI3 = {
    "model.layers.{}.self_attn.qkv_proj.weight": Split(
        (
            "layers.{}.self_attn.q_proj.weight",
            "layers.{}.self_attn.k_proj.weight",
            "layers.{}.self_attn.v_proj.weight",
        ),
        _qkv_sizes,
    ),
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.self_attn.o_proj.weight",
    "model.layers.{}.mlp.gate_up_proj.weight": Split(
        ("layers.{}.mlp.gate_proj.weight", "layers.{}.mlp.up_proj.weight"), _gate_up_sizes
    ),
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
}

WeightMap = dict[str, "str | Split"]


def weight_map(cfg: ModelConfig) -> WeightMap:
    """The HF → loris name map for this config's family and options."""
    t = cfg.model_type
    if t == "phi3":
        return {**_ENDS, **_LLAMA_NORMS, **_PHI3}
    m: dict = {**_ENDS, **_ATTN, **_MLP}
    m.update(_GEMMA_NORMS if t in ("gemma2", "gemma3_text") else _LLAMA_NORMS)
    if cfg.qk_norm:
        m.update(_QK_NORMS)
    if cfg.qkv_bias:
        m.update(_QKV_BIAS)
    if cfg.o_bias:
        m.update(_ATTN_BIAS)
    if cfg.mlp_bias:
        m.update(_MLP_BIAS)
    return m


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
            if isinstance(v, str):
                reverse[v] = k
        self._reverse = [(_template_regex(k), v) for k, v in reverse.items()]

    def to_loris(self, hf_name: str) -> str | Split | None:
        name = hf_name.removeprefix(self.prefix) if self.prefix else hf_name
        for pattern, target in self._patterns:
            m = pattern.match(name)
            if m:
                if isinstance(target, Split):
                    return Split(tuple(t.format(*m.groups()) for t in target.targets), target.sizes)
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
        return [(target, tensor)]


# Tensors a checkpoint may carry that the model rebuilds itself.
IGNORED_HF_KEYS = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias$)")
