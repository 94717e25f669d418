"""gpt-oss: attention with biases and a learned sink per head, sliding-window and full layers
alternating (``layer_types``), YaRN rope, and a Mixture-of-Experts feed-forward in every layer with
a biased router and biased experts in transformers' (experts, in, out) layout with interleaved
gate/up columns and a clamped SwiGLU (`loris.models.moe`, ``expert_layout="gpt_oss"``).

Hub checkpoints store the experts in MXFP4 (``*_blocks`` / ``*_scales``); loading dequantizes them
(`loris.models.mxfp4`)."""

from __future__ import annotations

from typing import Any

from loris.models.families.names import ATTN, ATTN_BIAS, ENDS, LLAMA_NORMS, WeightMap
from loris.models.families.spec import FamilySpec
from loris.models.hf_fields import MoEConfig, common_fields

# transformers' GptOssExperts fixes these (they are not in the config)
SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0


def config_fields(hf) -> dict[str, Any]:
    bias = bool(getattr(hf, "attention_bias", True))
    moe = MoEConfig(
        num_experts=hf.num_local_experts,
        top_k=hf.num_experts_per_tok,
        intermediate_size=hf.intermediate_size,
        norm_topk_prob=True,  # softmax over the top-k logits == top-k probabilities renormalised
        router_aux_loss_coef=float(getattr(hf, "router_aux_loss_coef", 0.0) or 0.0),
        output_router_logits=bool(getattr(hf, "output_router_logits", False)),
        router_bias=True,
        expert_bias=True,
        expert_layout="gpt_oss",
        swiglu_limit=SWIGLU_LIMIT,
        swiglu_alpha=SWIGLU_ALPHA,
    )
    return common_fields(
        hf,
        qkv_bias=bias,
        o_bias=bias,
        attn_sinks=True,
        sliding_window=getattr(hf, "sliding_window", None),
        moe=moe,
    )


_LAYER = {
    "model.layers.{}.self_attn.sinks": "layers.{}.self_attn.sinks",
    "model.layers.{}.mlp.router.weight": "layers.{}.mlp.gate.weight",
    "model.layers.{}.mlp.router.bias": "layers.{}.mlp.gate.bias",
    **{
        f"model.layers.{{}}.mlp.experts.{name}": f"layers.{{}}.mlp.experts.{name}"
        for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")
    },
}


def weight_map(cfg) -> WeightMap:
    m: dict = {**ENDS, **ATTN, **LLAMA_NORMS, **_LAYER}
    if cfg.qkv_bias:
        m.update(ATTN_BIAS)
    return m


def _gguf_metadata(writer, cfg, warn) -> None:
    """llama.cpp's gpt-oss hyper-parameters. It hard-codes the rest: sinks, the clamped SwiGLU
    (alpha 1.702, limit 7), softmax over the chosen experts, and sliding windows on even layers."""
    moe = cfg.moe
    sliding = [cfg.is_sliding(i) for i in range(cfg.num_layers)]
    if sliding != [i % 2 == 0 for i in range(cfg.num_layers)]:
        raise ValueError(
            "llama.cpp's gpt-oss puts the sliding window on every even layer and full attention on odd "
            f"ones; this model's layer_types are {cfg.layer_types}"
        )
    if (moe.swiglu_alpha, moe.swiglu_limit) != (SWIGLU_ALPHA, SWIGLU_LIMIT):
        raise ValueError("llama.cpp's gpt-oss fixes the SwiGLU alpha 1.702 and limit 7.0")
    writer.add_expert_count(moe.num_experts)
    writer.add_expert_used_count(moe.top_k)
    writer.add_expert_feed_forward_length(moe.intermediate_size)
    writer.add_sliding_window(cfg.sliding_window)
    if cfg.rope.rope_type == "yarn" and not cfg.rope.truncate:
        warn(
            "gpt-oss' YaRN keeps its correction range unrounded (truncate=False); llama.cpp rounds it, so "
            "rotary angles of a few channels differ slightly in llama.cpp"
        )


SPEC = FamilySpec(
    model_type="gpt_oss",
    config_fields=config_fields,
    weight_map=weight_map,
    gguf_arch="gpt-oss",
    gguf_key_length=True,
    gguf_rope_dimension=True,
    gguf_metadata=_gguf_metadata,
)
