"""Reading a transformers config into `ModelConfig` fields: the parts every family shares.

A family's own parsing (`loris.models.families`) starts from `common_fields` and overrides what is
particular to it; `ModelConfig.from_hf` picks the family and builds the dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class UnsupportedModelError(ValueError):
    pass


@dataclass
class RopeConfig:
    """One rotary embedding: the base and its scaling (HF `rope_parameters` for one layer type)."""

    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | dynamic | llama3 | yarn | longrope
    factor: float = 1.0
    rotary_dim: int = 0  # 0 = the whole head
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    attention_factor: float | None = None  # yarn / longrope
    truncate: bool = True  # yarn
    short_factor: list[float] | None = None  # longrope
    long_factor: list[float] | None = None  # longrope


@dataclass
class MoEConfig:
    """The sparse feed-forward of a Mixture-of-Experts family (Qwen3-MoE, gpt-oss), see `loris.models.moe`."""

    num_experts: int
    top_k: int  # experts per token
    intermediate_size: int  # of each expert
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum to 1
    sparse_step: int = 1  # every sparse_step-th layer is sparse ...
    mlp_only_layers: list[int] = field(default_factory=list)  # ... except these (dense MLP)
    router_aux_loss_coef: float = 0.0
    output_router_logits: bool = False  # transformers adds the load-balancing loss only when True
    # gpt-oss: a router with a bias, experts with biases, stored (experts, in, out) with gate and
    # up columns interleaved, and a clamped SwiGLU ``(clamp(u, ±limit) + 1) · g·σ(alpha·g)`` with
    # ``g = min(g, limit)``
    router_bias: bool = False
    expert_bias: bool = False
    expert_layout: str = "stacked"  # "stacked": (E, out, in), gate rows then up rows | "gpt_oss"
    swiglu_limit: float | None = None  # None: the family's plain gated activation
    swiglu_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.expert_layout not in ("stacked", "gpt_oss"):
            raise ValueError(f"unknown expert_layout {self.expert_layout!r} (stacked, gpt_oss)")

    def is_sparse(self, layer: int) -> bool:
        return layer not in self.mlp_only_layers and (layer + 1) % self.sparse_step == 0


def rope_from_params(params: dict[str, Any] | None, head_dim: int) -> RopeConfig:
    params = dict(params or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "su":  # old name of longrope (Phi-3)
        rope_type = "longrope"
    partial = params.get("partial_rotary_factor", 1.0)
    rotary_dim = int(head_dim * partial)
    return RopeConfig(
        theta=float(params.get("rope_theta", 10000.0)),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0) or 1.0),
        rotary_dim=rotary_dim if rotary_dim != head_dim else 0,
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
        low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        beta_fast=params.get("beta_fast"),
        beta_slow=params.get("beta_slow"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        attention_factor=params.get("attention_factor"),
        truncate=params.get("truncate", True),
        short_factor=params.get("short_factor"),
        long_factor=params.get("long_factor"),
    )


def head_dim_of(hf) -> int:
    return getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads


def _dtype_name(hf) -> str | None:
    dt = getattr(hf, "dtype", None)  # transformers 5 reads an old config's torch_dtype into dtype
    if dt is None:
        return None
    return str(dt).removeprefix("torch.")


def common_fields(hf, **overrides: Any) -> dict[str, Any]:
    head_dim = head_dim_of(hf)
    fields: dict[str, Any] = dict(
        model_type=hf.model_type,
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim,
        max_position_embeddings=hf.max_position_embeddings,
        rms_norm_eps=hf.rms_norm_eps,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        rope=rope_from_params(getattr(hf, "rope_parameters", None), head_dim),
        layer_types=list(getattr(hf, "layer_types", None) or []),
        bos_token_id=getattr(hf, "bos_token_id", None),
        eos_token_id=getattr(hf, "eos_token_id", None),
        pad_token_id=getattr(hf, "pad_token_id", None),
        torch_dtype=_dtype_name(hf),
        hf_config=hf.to_dict(),
    )
    fields.update(overrides)
    return fields


def activation_of(name: str) -> str:
    if name == "silu":
        return "silu"
    if name in ("gelu_pytorch_tanh", "gelu_tanh"):
        return "gelu_tanh"
    raise UnsupportedModelError(f"activation {name!r} is not supported (silu, gelu_pytorch_tanh are)")
