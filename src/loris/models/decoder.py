"""The one decoder behind every supported family, driven by `ModelConfig`.

Blocks receive their projections (q/k/v/o, gate/up/down) as modules, so a LoRA wrapper or a
4-bit linear replaces a slot without a parallel class tree. Attention runs through PyTorch's
`scaled_dot_product_attention` (GQA, causal, padding, sliding windows), with an explicit path for
Gemma 2's logit soft-capping and one for gpt-oss' attention sinks (`loris.kernels.sink_attention`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from loris.kernels.activations import GATED_ACTIVATIONS
from loris.kernels.add_rms_norm import add_rms_norm
from loris.kernels.cross_entropy import linear_cross_entropy
from loris.kernels.qk_norm_rope import qk_norm_rope
from loris.kernels.rms_norm import rms_norm
from loris.kernels.rope import apply_rope
from loris.kernels.sink_attention import sink_attention
from loris.kernels.softcap_attention import softcap_attention
from loris.lora import gated_mlp, project
from loris.models.config import ModelConfig
from loris.models.lm_output import CausalLMOutput, causal_lm_output, softcap_logits
from loris.models.moe import RouterStats, SparseMoE, aux_loss_term
from loris.models.rope import rope_cos_sin
from loris.models.state import ModelState

LinearFactory = Callable[[int, int, bool], nn.Module]


def default_linear(in_features: int, out_features: int, bias: bool) -> nn.Module:
    return nn.Linear(in_features, out_features, bias=bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps = eps
        self.offset = offset
        # (1 + w) norms store w around 0; plain norms store w around 1.
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.offset)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, make_linear: LinearFactory = default_linear):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = cfg.scale
        self.softcap = cfg.attn_logit_softcap
        self.sliding_window = cfg.sliding_window if cfg.is_sliding(layer) else None
        q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = make_linear(cfg.hidden_size, q_out, cfg.qkv_bias)
        self.k_proj = make_linear(cfg.hidden_size, kv_out, cfg.qkv_bias)
        self.v_proj = make_linear(cfg.hidden_size, kv_out, cfg.qkv_bias)
        self.o_proj = make_linear(q_out, cfg.hidden_size, cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)
        else:
            self.q_norm = self.k_norm = None
        self.sinks = nn.Parameter(torch.zeros(cfg.num_heads)) if cfg.attn_sinks else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        kv_cache=None,
        cache_start: int = 0,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = project(x, (self.q_proj, self.k_proj, self.v_proj))
        q = q.view(b, n, self.num_heads, self.head_dim)
        k = k.view(b, n, self.num_kv_heads, self.head_dim)
        v = v.view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            qn, kn = self.q_norm, self.k_norm
            q, k = qk_norm_rope(q, k, qn.weight, kn.weight, qn.eps, qn.offset, cos, sin)
        else:
            q, k = apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v, cache_start)
        if self.sinks is not None:
            out = sink_attention(q, k, v, mask, self.scale, self.sinks)
        elif self.softcap is not None:
            out = softcap_attention(q, k, v, mask, self.scale, self.softcap)
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None and q.shape[2] > 1,
                scale=self.scale,
                enable_gqa=True,
            )
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory = default_linear):
        super().__init__()
        self.gate_proj = make_linear(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)
        self.up_proj = make_linear(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)
        self.down_proj = make_linear(cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias)
        self.activation = cfg.activation
        self.act = GATED_ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor, output_unused: bool = False) -> torch.Tensor:
        """``output_unused``: the caller only back-propagates through the result and never reads it,
        so the fused path may skip the down projection's forward (see `Block.backward_terms`)."""
        return gated_mlp(
            x, self.gate_proj, self.up_proj, self.down_proj, self.activation, self.act, output_unused
        )


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, make_linear: LinearFactory = default_linear):
        super().__init__()
        eps, off = cfg.rms_norm_eps, cfg.norm_offset
        self.attn_norm = RMSNorm(cfg.hidden_size, eps, off)
        self.self_attn = Attention(cfg, layer, make_linear)
        self.mlp_norm = RMSNorm(cfg.hidden_size, eps, off)
        if cfg.is_moe_layer(layer):
            moe = cfg.moe
            self.mlp = SparseMoE(
                cfg.hidden_size,
                moe.intermediate_size,
                moe.num_experts,
                moe.top_k,
                moe.norm_topk_prob,
                cfg.activation,
                moe,
            )
        else:
            self.mlp = MLP(cfg, make_linear)
        if cfg.sandwich_norms:
            self.attn_post_norm = RMSNorm(cfg.hidden_size, eps, off)
            self.mlp_post_norm = RMSNorm(cfg.hidden_size, eps, off)
        else:
            self.attn_post_norm = self.mlp_post_norm = None

    def forward(self, x, cos, sin, mask, kv_cache=None, cache_start: int = 0) -> torch.Tensor:
        x, normed = self._attend(x, cos, sin, mask, kv_cache, cache_start)
        return x + self._mlp_branch(normed)

    def _attend(self, x, cos, sin, mask, kv_cache=None, cache_start: int = 0):
        """The residual stream after the attention half, and its pre-MLP norm (one fused kernel)."""
        h = self.self_attn(self.attn_norm(x), cos, sin, mask, kv_cache, cache_start)
        if self.attn_post_norm is not None:
            h = self.attn_post_norm(h)
        norm = self.mlp_norm
        return add_rms_norm(x, h, norm.weight, norm.eps, norm.offset)

    def _mlp_branch(self, normed: torch.Tensor, output_unused: bool = False) -> torch.Tensor:
        h = self.mlp(normed, output_unused and self.mlp_post_norm is None)
        return h if self.mlp_post_norm is None else self.mlp_post_norm(h)

    def backward_terms(self, x, cos, sin, mask) -> tuple[torch.Tensor, ...]:
        """Tensors whose sum is ``forward(x)``, rebuilt by activation checkpointing only to
        back-propagate the output's gradient into each of them. Their values are never read, so the
        MLP may leave its output uncomputed: the down projection's forward (and the activation
        feeding it) is a tenth of a block's recompute that nothing in backward needs."""
        x, normed = self._attend(x, cos, sin, mask)
        return x, self._mlp_branch(normed, output_unused=True)


def causal_mask(
    q_len: int,
    kv_len: int,
    start: int,
    attention_mask: torch.Tensor | None,
    sliding_window: int | None,
    device: torch.device,
    documents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean (batch|1, 1, q_len, kv_len) mask, True where a query may attend.

    Query ``i`` sits at cache index ``start + i``. Every query may also see itself, so rows that are
    pure padding (left-padded prompts) stay finite instead of producing NaN. ``documents`` (batch, len)
    numbers the samples packed into each row; attention stays inside a sample.
    """
    q_idx = torch.arange(start, start + q_len, device=device)[:, None]
    kv_idx = torch.arange(kv_len, device=device)[None, :]
    allowed = kv_idx <= q_idx
    if sliding_window is not None:
        allowed = allowed & (kv_idx > q_idx - sliding_window)
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :kv_len].bool()
    if documents is not None:
        allowed = allowed & (documents[:, None, :, None] == documents[:, None, None, :])
    return allowed | (kv_idx == q_idx)[None, None]


def packed_documents(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Sample numbers for rows that pack several samples (position ids restart at 0), else None."""
    if position_ids.shape[-1] < 2 or not bool((position_ids[:, 1:] == 0).any()):
        return None
    return (position_ids == 0).cumsum(-1)


class LorisForCausalLM(nn.Module):
    """Embedding → blocks → final norm → LM head, for any `ModelConfig`.

    Just the model: the methods users call on it (``save_pretrained_merged``, ``fast_generate``, ...)
    belong to the face's subclass, `loris.face.model.LorisModel`, which the loader builds on request."""

    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory = default_linear):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i, make_linear) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing: Callable | None = None  # set by loris.checkpointing
        self.state = ModelState()  # what the face and the trainers know about it (loris.models.state)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def _rope_tables(self, position_ids: torch.Tensor, dtype: torch.dtype) -> dict[int, tuple]:
        """cos/sin per distinct rope (Gemma 3 has a local and a global one), computed once per forward."""
        cfg, tables, by_rope = self.config, {}, {}
        for i in range(cfg.num_layers):
            rope = cfg.rope_for_layer(i)
            key = id(rope)
            if key not in by_rope:
                by_rope[key] = rope_cos_sin(
                    rope, cfg.head_dim, cfg.max_position_embeddings, position_ids, dtype
                )
            tables[i] = by_rope[key]
        return tables

    def _masks(
        self, q_len, kv_len, start, attention_mask, device, documents=None
    ) -> dict[int | None, torch.Tensor | None]:
        """One mask per distinct window; None where no mask is needed: a full causal prefill (SDPA's
        is_causal) or a single decoding query that may see the whole cache."""
        masks: dict[int | None, torch.Tensor | None] = {}
        for i in range(self.config.num_layers):
            window = self.config.sliding_window if self.config.is_sliding(i) else None
            if window in masks:
                continue
            fits = window is None or kv_len <= window
            plain = (
                attention_mask is None
                and documents is None
                and fits
                and ((start == 0 and q_len == kv_len) or q_len == 1)
            )
            masks[window] = (
                None
                if plain
                else causal_mask(q_len, kv_len, start, attention_mask, window, device, documents)
            )
        return masks

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache=None,
        inputs_embeds: torch.Tensor | None = None,
        *,
        router_stats: RouterStats | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (batch, seq, hidden).

        ``router_stats``: this forward's routing record for the MoE layers' load-balancing loss
        (`_router_stats`), None when this pass takes no such term (see `_install_router_stats`)."""
        cfg = self.config
        self._install_router_stats(router_stats)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if cfg.embed_scale != 1.0:
            x = x * torch.tensor(cfg.embed_scale, dtype=x.dtype)
        b, n = x.shape[:2]
        start = kv_cache.length if kv_cache is not None else 0
        documents = None
        if position_ids is None:
            position_ids = torch.arange(start, start + n, device=x.device).expand(b, n)
        elif kv_cache is None:
            documents = packed_documents(position_ids)
        kv_len = start + n
        if attention_mask is not None and bool(attention_mask[:, :kv_len].all()):
            attention_mask = None  # no padding: let SDPA use its causal fast path
        masks = self._masks(n, kv_len, start, attention_mask, x.device, documents)
        tables = self._rope_tables(position_ids, x.dtype)
        for i, block in enumerate(self.layers):
            cos, sin = tables[i]
            mask = masks[cfg.sliding_window if cfg.is_sliding(i) else None]
            if self.gradient_checkpointing is not None and self.training and kv_cache is None:
                x = self.gradient_checkpointing(block, x, cos, sin, mask)
            else:
                x = block(x, cos, sin, mask, kv_cache, start)
        if kv_cache is not None:
            kv_cache.advance(n)
        return self.norm(x)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return softcap_logits(self.lm_head(h), self.config.final_logit_softcap)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        kv_cache=None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool | None = None,
        logits_to_keep: int = 0,
        **_: object,
    ) -> CausalLMOutput:
        """Like transformers' causal-LM forward: labels are shifted inside and -100 is ignored.

        While training with labels the logits are not materialised (the loss is computed from the
        hidden states in chunks) unless ``return_logits=True``. ``num_items_in_batch`` turns the mean
        into a sum divided by that count, for exact gradient accumulation.
        """
        stats = self._router_stats(labels, attention_mask)
        try:
            h = self.hidden_states(
                input_ids, attention_mask, position_ids, kv_cache, inputs_embeds, router_stats=stats
            )
        finally:
            if stats is not None:
                stats.open = False  # complete: recomputes in backward add nothing to it
        out = causal_lm_output(
            h,
            labels,
            lm_loss=self._lm_loss,
            logits_from_hidden=self.logits_from_hidden,
            training=self.training,
            num_items_in_batch=num_items_in_batch,
            return_logits=return_logits,
            logits_to_keep=logits_to_keep,
        )
        if out.loss is not None and stats is not None and stats.counts:
            coef = self.config.moe.router_aux_loss_coef
            out.loss = out.loss + aux_loss_term(stats, coef, out.loss.device)
        return out

    def _router_stats(self, labels, attention_mask) -> RouterStats | None:
        """A fresh routing record for the MoE layers when this forward's loss takes the
        load-balancing term (as in transformers: labels given and ``output_router_logits``)."""
        moe = self.config.moe
        if moe is None or labels is None or not moe.output_router_logits or not moe.router_aux_loss_coef:
            return None
        weights = attention_mask.reshape(-1) if attention_mask is not None else None
        return RouterStats(token_weights=weights)

    def _install_router_stats(self, stats: RouterStats | None) -> None:
        """Hand the MoE layers this pass's record (None: no load-balancing term this time).

        Every pass sets it, so a record never leaks into a later pass (a GRPO log-prob pass calls
        `hidden_states` directly). Each layer keeps it after the forward on purpose: activation
        checkpointing recomputes the layer in backward, and that recompute must route the aux
        gradient through the same, by then closed, record (`loris.models.moe.RouterStats`)."""
        if self.config.moe is None:
            return
        for block in self.layers:
            if isinstance(block.mlp, SparseMoE):
                block.mlp.stats = stats

    def _lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
        return linear_cross_entropy(
            hidden, self.lm_head.weight, labels, softcap=self.config.final_logit_softcap, reduction=reduction
        )
