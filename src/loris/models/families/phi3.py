"""Phi-3 / Phi-3.5 / Phi-4-mini: Llama's norms with fused qkv_proj and gate_up_proj tensors (split
into loris' separate projections on load) and LongRoPE."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loris.models.families.names import ENDS, LLAMA_NORMS, Split, WeightMap
from loris.models.families.spec import FamilySpec
from loris.models.hf_fields import activation_of, common_fields, head_dim_of, rope_from_params

if TYPE_CHECKING:  # pragma: no cover
    from loris.models.config import ModelConfig


def config_fields(hf) -> dict[str, Any]:
    params = dict(hf.rope_parameters or {})
    if params.get("rope_type") in ("longrope", "su"):
        params.setdefault("original_max_position_embeddings", hf.original_max_position_embeddings)
    head_dim = head_dim_of(hf)
    return common_fields(
        hf,
        rope=rope_from_params(params, head_dim),
        sliding_window=getattr(hf, "sliding_window", None),
        layer_types=[],
        activation=activation_of(hf.hidden_act),
    )


def _qkv_sizes(cfg: ModelConfig) -> tuple[int, ...]:
    kv = cfg.num_kv_heads * cfg.head_dim
    return (cfg.num_heads * cfg.head_dim, kv, kv)


def _gate_up_sizes(cfg: ModelConfig) -> tuple[int, ...]:
    return (cfg.intermediate_size, cfg.intermediate_size)


PHI3_PROJECTIONS = {
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


def weight_map(cfg: ModelConfig) -> WeightMap:
    return {**ENDS, **LLAMA_NORMS, **PHI3_PROJECTIONS}


def gguf_metadata(writer, cfg: ModelConfig, warn: Callable[[str], None]) -> None:
    if cfg.sliding_window:
        writer.add_sliding_window(cfg.sliding_window)


SPEC = FamilySpec(
    model_type="phi3",
    config_fields=config_fields,
    weight_map=weight_map,
    gguf_arch="phi3",
    gguf_rope_dimension=True,
    gguf_metadata=gguf_metadata,
    gguf_tensor_names={"ffn_up": "mlp.gate_up_proj"},
)
