"""Qwen3-MoE: Qwen3's attention with a Mixture-of-Experts feed-forward in its layers
(`loris.models.moe`): a top-k softmax router and stacked experts."""

from __future__ import annotations

from typing import Any

from loris.models.families.names import LLAMA_NORMS, standard_map
from loris.models.families.spec import FamilySpec
from loris.models.hf_fields import MoEConfig, activation_of, common_fields


def config_fields(hf) -> dict[str, Any]:
    bias = bool(getattr(hf, "attention_bias", False))
    moe = MoEConfig(
        num_experts=hf.num_experts,
        top_k=hf.num_experts_per_tok,
        intermediate_size=hf.moe_intermediate_size,
        norm_topk_prob=bool(hf.norm_topk_prob),
        sparse_step=int(getattr(hf, "decoder_sparse_step", 1) or 1),
        mlp_only_layers=list(getattr(hf, "mlp_only_layers", None) or []),
        router_aux_loss_coef=float(getattr(hf, "router_aux_loss_coef", 0.0) or 0.0),
        output_router_logits=bool(getattr(hf, "output_router_logits", False)),
    )
    return common_fields(
        hf,
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=True,
        sliding_window=getattr(hf, "sliding_window", None),
        moe=moe,
        activation=activation_of(hf.hidden_act),
    )


def _gguf_metadata(writer, cfg, warn) -> None:
    """llama.cpp's qwen3moe expert hyper-parameters."""
    moe = cfg.moe
    if moe.mlp_only_layers or moe.sparse_step != 1:
        raise ValueError(
            "llama.cpp's qwen3moe has an expert block in every layer; this model has dense MLP layers "
            f"(mlp_only_layers={moe.mlp_only_layers}, decoder_sparse_step={moe.sparse_step})"
        )
    writer.add_expert_count(moe.num_experts)
    writer.add_expert_used_count(moe.top_k)
    writer.add_expert_feed_forward_length(moe.intermediate_size)
    if not moe.norm_topk_prob:
        warn("norm_topk_prob=False has no GGUF field: llama.cpp's qwen3moe renormalises the top-k weights")


SPEC = FamilySpec(
    model_type="qwen3_moe",
    config_fields=config_fields,
    weight_map=lambda cfg: standard_map(cfg, LLAMA_NORMS),
    gguf_arch="qwen3moe",
    gguf_key_length=True,
    gguf_rope_dimension=True,
    gguf_metadata=_gguf_metadata,
)
