"""The HF ↔ loris weight-name pieces families build their maps from.

Keys are HF name templates with ``{}`` for the layer index; values are loris names. A `Split`
value cuts one fused HF tensor (Phi-3's qkv_proj, gate_up_proj) into loris' separate projections,
with sizes derived from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from loris.models.config import ModelConfig


@dataclass(frozen=True)
class Split:
    targets: tuple[str, ...]
    sizes: Callable[[ModelConfig], tuple[int, ...]]  # along dim 0


@dataclass(frozen=True)
class Stacked:
    """An HF tensor that is one expert's slice of a stacked loris weight (experts, rows, cols):
    transformers' Hub checkpoints store each expert's projections apart, loris (like transformers
    5 in memory) stacks them; ``part`` picks the half of a fused gate/up weight (None: all rows)."""

    target: str
    part: int | None = None
    expert: int = -1  # set once resolved against a concrete name


ATTN = {
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.self_attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.self_attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.self_attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.self_attn.o_proj.weight",
}
ATTN_BIAS = {k.replace(".weight", ".bias"): v.replace(".weight", ".bias") for k, v in ATTN.items()}
QKV_BIAS = {k: v for k, v in ATTN_BIAS.items() if "o_proj" not in k}
MLP = {
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
}
MLP_BIAS = {k.replace(".weight", ".bias"): v.replace(".weight", ".bias") for k, v in MLP.items()}
ENDS = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
LLAMA_NORMS = {
    "model.layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.weight",
}
# Gemma 2/3 name their four norms differently: "post_attention" is the norm *after* attention.
GEMMA_NORMS = {
    "model.layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.attn_post_norm.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "layers.{}.mlp_norm.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "layers.{}.mlp_post_norm.weight",
}
QK_NORMS = {
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.self_attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.self_attn.k_norm.weight",
}

# Mixture-of-Experts layers: the router and the stacked experts (per-expert names as on the Hub,
# stacked names as transformers 5 holds them in memory and as a checkpoint written from it has them)
MOE = {
    "model.layers.{}.mlp.gate.weight": "layers.{}.mlp.gate.weight",
    "model.layers.{}.mlp.experts.{}.gate_proj.weight": Stacked("layers.{}.mlp.experts.gate_up_proj", 0),
    "model.layers.{}.mlp.experts.{}.up_proj.weight": Stacked("layers.{}.mlp.experts.gate_up_proj", 1),
    "model.layers.{}.mlp.experts.{}.down_proj.weight": Stacked("layers.{}.mlp.experts.down_proj"),
    "model.layers.{}.mlp.experts.gate_up_proj": "layers.{}.mlp.experts.gate_up_proj",
    "model.layers.{}.mlp.experts.down_proj": "layers.{}.mlp.experts.down_proj",
}

WeightMap = dict[str, "str | Split | Stacked"]


def standard_map(cfg: ModelConfig, norms: dict[str, str]) -> WeightMap:
    """Separate q/k/v/o and gate/up/down projections with ``norms``, plus the optional q/k norms
    and biases the config asks for (Llama, Mistral, Qwen, Gemma)."""
    m: dict = {**ENDS, **ATTN, **MLP}
    m.update(norms)
    if cfg.qk_norm:
        m.update(QK_NORMS)
    if cfg.qkv_bias:
        m.update(QKV_BIAS)
    if cfg.o_bias:
        m.update(ATTN_BIAS)
    if cfg.mlp_bias:
        m.update(MLP_BIAS)
    if cfg.moe is not None:
        m.update(MOE)
    return m
