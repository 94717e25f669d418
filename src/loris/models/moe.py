"""Mixture-of-Experts feed-forward (Qwen3-MoE, gpt-oss): a top-k softmax router and experts run as
grouped GEMMs.

Layout follows transformers 5: per layer a router ``gate`` (experts × hidden) and one stacked weight
per projection, ``experts.gate_up_proj`` (experts, 2·moe_intermediate, hidden: gate rows then up
rows) and ``experts.down_proj`` (experts, hidden, moe_intermediate). Tokens are sorted by the
expert they were routed to and every projection is one grouped GEMM over all experts
(`loris.kernels.grouped_linear`); `moe_reference` is the loop over experts the tests compare with.

gpt-oss (``MoEConfig.expert_layout == "gpt_oss"``) keeps transformers' layout for it: a router with
a bias, experts with biases, ``gate_up_proj`` (experts, hidden, 2·intermediate) with gate and up
columns interleaved (gate, up, gate, up, ...) and ``down_proj`` (experts, intermediate, hidden),
i.e. every weight stored (in, out) and run through the same grouped GEMM as a transposed view; its
clamped SwiGLU is `clamped_swiglu`. Its router (top-k of the logits, softmax over those k) equals
the softmax router with ``norm_topk_prob``: softmax over k logits is their probabilities
renormalised.

LoRA on experts (`loris.lora.ExpertLora`, put in place by `inject_expert_lora`) is one low-rank
pair per expert over a stacked weight, as PEFT's ``target_parameters`` adapters are.

The load-balancing loss is transformers' (Switch Transformer's): over all MoE layers together,
``num_experts · Σ_e f_e · P_e`` with ``f_e`` the share of top-k assignments to expert e and ``P_e``
its mean router probability. Each layer records its counts and probability sums in a
`RouterStats` the model owns for one forward.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from loris.kernels.activations import GATED_ACTIVATIONS
from loris.kernels.grouped_linear import grouped_input_grad, grouped_linear
from loris.lora import ExpertLora, LoraConfig
from loris.models.hf_fields import MoEConfig
from loris.quant import QuantizedLinear, quantized_linear


@dataclass
class RouterStats:
    """One forward's routing record across the MoE layers, for the load-balancing loss.

    The loss's value needs every layer's counts, so its gradient is injected where each layer's
    router probabilities are (`_AuxGrad`), scaled by what reaches the loss term (`_AuxScale`, whose
    node autograd runs first, being the last one created). That way it also reaches layers that
    activation checkpointing recomputes in backward, which record nothing a second time."""

    token_weights: torch.Tensor | None = None  # (tokens,) 1 for real tokens, 0 for padding
    counts: list[torch.Tensor] = field(default_factory=list)  # (experts,) top-k assignments
    prob_sums: list[torch.Tensor] = field(default_factory=list)  # (experts,)
    rows: list[torch.Tensor] = field(default_factory=list)  # tokens counted per layer
    open: bool = True
    coef: float = 0.0
    scale: torch.Tensor | None = None  # d(total loss) / d(aux term), set in backward

    def add(self, probs: torch.Tensor, top_i: torch.Tensor) -> None:
        """``probs`` (tokens, experts), ``top_i`` (tokens, k)."""
        e = probs.shape[-1]
        w = self.token_weights
        w = torch.ones(probs.shape[0], device=probs.device) if w is None else w.to(probs.device).float()
        counts = torch.zeros(e, device=probs.device).scatter_add_(
            0, top_i.reshape(-1), w.repeat_interleave(top_i.shape[-1])
        )
        self.counts.append(counts)
        self.prob_sums.append((probs.detach().float() * w[:, None]).sum(0))
        self.rows.append(w.sum())

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(share of assignments per expert f, all layers' token count)."""
        total = torch.stack(self.rows).sum()
        return torch.stack(self.counts).sum(0) / total, total

    def loss(self) -> torch.Tensor:
        f, total = self.totals()
        p = torch.stack(self.prob_sums).sum(0) / total
        return (f * p).sum() * f.shape[0]


class _AuxScale(torch.autograd.Function):
    """``coef · aux`` as a loss term; its backward records the gradient reaching it."""

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, value: torch.Tensor, stats: RouterStats) -> torch.Tensor:
        ctx.stats = stats
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.stats.scale = grad.detach()
        return torch.zeros((), device=grad.device), None, None


class _AuxGrad(torch.autograd.Function):
    """Identity on the top-k weights; in backward adds d(coef · aux)/d(probs) to the router
    probabilities: ``coef · E · f_e · w_n / tokens`` (f and the token count over all layers)."""

    @staticmethod
    def forward(ctx, top_w: torch.Tensor, probs: torch.Tensor, stats: RouterStats) -> torch.Tensor:
        ctx.stats = stats
        ctx.n, ctx.dtype = probs.shape[0], probs.dtype
        return top_w.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        stats = ctx.stats
        if stats.scale is None or not stats.counts:
            return grad, None, None
        f, total = stats.totals()
        w = stats.token_weights
        w = torch.ones(ctx.n, device=f.device) if w is None else w.to(f.device).float()
        g = (stats.scale * stats.coef * f.shape[0] / total) * f[None, :] * w[:, None]
        return grad, g.to(ctx.dtype), None


def aux_loss_term(stats: RouterStats, coef: float, device: torch.device) -> torch.Tensor:
    """``coef ·`` transformers' load-balancing loss of this forward, differentiable (see `RouterStats`)."""
    stats.coef = coef
    stats.scale = None
    anchor = torch.zeros((), device=device, requires_grad=True)
    return _AuxScale.apply(anchor, (coef * stats.loss()).to(device), stats)


class _FrozenGroupedLinear(torch.autograd.Function):
    """`grouped_linear` over quantized stacked weights: dequantized in forward and again in backward
    (only the input gradient; the weights are frozen), never kept between the two."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, q: QuantizedLinear, shape: tuple, offsets: torch.Tensor, transposed: bool
    ):
        ctx.q, ctx.shape, ctx.transposed = q, shape, transposed
        ctx.save_for_backward(offsets)
        with torch.no_grad():
            return grouped_linear(x, _as_out_in(q.dequantize(x.dtype).view(shape), transposed), offsets)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (offsets,) = ctx.saved_tensors
        w = _as_out_in(ctx.q.dequantize(dy.dtype).view(ctx.shape), ctx.transposed).contiguous()
        return grouped_input_grad(dy, w, offsets), None, None, None, None


def _as_out_in(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A stacked weight as (experts, out, in), a view when it is stored (experts, in, out)."""
    return w.transpose(1, 2) if transposed else w


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss' gated activation: ``(clamp(up, ±limit) + 1) · g · sigmoid(alpha · g)``, ``g = min(gate, limit)``."""
    gate = gate.clamp(max=limit)
    up = up.clamp(-limit, limit)
    return (up + 1) * gate * torch.sigmoid(gate * alpha)


class Experts(nn.Module):
    """Every expert's gated MLP, stacked: ``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I); in
    gpt-oss' layout (``transposed``) (E, H, 2I) with gate/up columns interleaved and (E, I, H), plus
    biases ``gate_up_proj_bias`` (E, 2I) and ``down_proj_bias`` (E, H).

    `quantize` turns a stacked weight into one 4-bit matrix (experts·rows, cols) kept in
    ``<name>_q``; the forward then dequantizes it per use (QLoRA on the experts)."""

    def __init__(
        self, num_experts: int, hidden: int, intermediate: int, activation: str, moe: MoEConfig | None = None
    ):
        super().__init__()
        self.num_experts, self.intermediate = num_experts, intermediate
        self.transposed = moe is not None and moe.expert_layout == "gpt_oss"
        self.shapes = {
            "gate_up_proj": (num_experts, 2 * intermediate, hidden),
            "down_proj": (num_experts, hidden, intermediate),
        }  # as stored
        if self.transposed:
            self.shapes = {k: (e, i, o) for k, (e, o, i) in self.shapes.items()}
        self.gate_up_proj = nn.Parameter(torch.empty(self.shapes["gate_up_proj"]))
        self.down_proj = nn.Parameter(torch.empty(self.shapes["down_proj"]))
        if moe is not None and moe.expert_bias:
            self.gate_up_proj_bias = nn.Parameter(torch.empty(num_experts, 2 * intermediate))
            self.down_proj_bias = nn.Parameter(torch.empty(num_experts, hidden))
        else:
            self.gate_up_proj_bias = self.down_proj_bias = None
        self.gate_up_proj_q: QuantizedLinear | None = None
        self.down_proj_q: QuantizedLinear | None = None
        self.activation = activation
        self.act = GATED_ACTIVATIONS[activation]
        if moe is not None and moe.swiglu_limit is not None:
            self.act = functools.partial(clamped_swiglu, alpha=moe.swiglu_alpha, limit=moe.swiglu_limit)
        self.gate_up_lora: ExpertLora | None = None
        self.down_lora: ExpertLora | None = None

    def out_in_shape(self, name: str) -> tuple[int, int, int]:
        """(experts, out, in) of stacked weight ``name``, whatever its storage order."""
        e, a, b = self.shapes[name]
        return (e, b, a) if self.transposed else (e, a, b)

    def quantize(self, name: str, mode: str) -> None:
        """Store stacked weight ``name`` quantized (nf4 / int8) and drop its 16-bit copy."""
        w = getattr(self, name)
        e, rows, cols = w.shape
        setattr(self, name + "_q", quantized_linear(w.detach().reshape(e * rows, cols), None, mode))
        delattr(self, name)
        setattr(self, name, None)

    def weight(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Stacked weight ``name`` (dequantized when stored 4-bit)."""
        q = getattr(self, name + "_q")
        if q is None:
            w = getattr(self, name)
            return w if dtype is None else w.to(dtype)
        return q.dequantize(dtype).view(self.shapes[name])

    def _project(
        self, x: torch.Tensor, name: str, offsets: torch.Tensor, experts: torch.Tensor
    ) -> torch.Tensor:
        """Rows ``x`` (sorted by expert; ``experts`` their expert ids) through stacked weight ``name``."""
        q = getattr(self, name + "_q")
        if q is None:
            out = grouped_linear(x, _as_out_in(getattr(self, name), self.transposed), offsets)
        else:
            out = _FrozenGroupedLinear.apply(x, q, self.shapes[name], offsets, self.transposed)
        bias = getattr(self, name + "_bias")
        return out if bias is None else out + bias[experts].to(out.dtype)

    def forward(self, x: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """``x`` (tokens, H); ``top_i`` / ``top_w`` (tokens, k): chosen experts and their weights."""
        k = top_i.shape[-1]
        flat = top_i.reshape(-1)
        order = torch.argsort(flat, stable=True)
        rows = order // k
        ones = torch.ones_like(flat)
        offsets = flat.new_zeros(self.num_experts).scatter_add_(0, flat, ones).cumsum(0).to(torch.int32)
        xs = x[rows]
        ids = flat[order]
        h = self._project(xs, "gate_up_proj", offsets, ids)
        if self.gate_up_lora is not None and self.gate_up_lora.active:
            h = h + self.gate_up_lora(xs, offsets).to(h.dtype)
        if self.transposed:
            gate, up = h[:, 0::2], h[:, 1::2]
        else:
            gate, up = h.split(self.intermediate, dim=-1)
        a = self.act(gate, up)
        out = self._project(a, "down_proj", offsets, ids)
        if self.down_lora is not None and self.down_lora.active:
            out = out + self.down_lora(a, offsets).to(out.dtype)
        out = out * top_w.reshape(-1)[order, None].to(out.dtype)
        return torch.zeros_like(x).index_add_(0, rows, out)


def route(
    logits: torch.Tensor, top_k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities (tokens, E) in fp32, top-k weights in the logits' dtype, top-k expert ids)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_w, top_i = torch.topk(probs, top_k, dim=-1)
    if norm_topk_prob:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return probs, top_w.to(logits.dtype), top_i


class SparseMoE(nn.Module):
    """Router + experts for one layer (Qwen3-MoE's sparse block)."""

    def __init__(
        self,
        hidden: int,
        intermediate: int,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool,
        activation: str,
        moe: MoEConfig | None = None,
    ):
        """``moe``: the family's options beyond these (gpt-oss' biases, layout and activation)."""
        super().__init__()
        self.gate = nn.Linear(hidden, num_experts, bias=moe is not None and moe.router_bias)
        self.experts = Experts(num_experts, hidden, intermediate, activation, moe)
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.stats: RouterStats | None = None  # set by the model for a forward that needs the aux loss

    def forward(self, x: torch.Tensor, output_unused: bool = False) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs, top_w, top_i = route(
            F.linear(flat, self.gate.weight, self.gate.bias), self.top_k, self.norm_topk_prob
        )
        stats = self.stats
        if stats is not None:
            if stats.open:
                stats.add(probs, top_i)
            if torch.is_grad_enabled() and probs.requires_grad:
                top_w = _AuxGrad.apply(top_w, probs, stats)
        return self.experts(flat, top_i, top_w).reshape(shape)


def moe_reference(
    x: torch.Tensor,
    router: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    norm_topk_prob: bool,
    act_fn,
    *,
    router_bias: torch.Tensor | None = None,
    gate_up_bias: torch.Tensor | None = None,
    down_bias: torch.Tensor | None = None,
    interleaved: bool = False,
) -> torch.Tensor:
    """The sparse block written as a loop over experts (transformers' way), for parity tests.
    ``gate_up`` / ``down`` are the effective (LoRA-merged) stacked weights as (experts, out, in);
    ``interleaved``: gate and up rows alternate (gpt-oss)."""
    flat = x.reshape(-1, x.shape[-1])
    _, top_w, top_i = route(F.linear(flat, router, router_bias), top_k, norm_topk_prob)
    out = torch.zeros_like(flat)
    inter = down.shape[-1]
    for e in range(router.shape[0]):
        token, slot = torch.where(top_i == e)
        if token.numel() == 0:
            continue
        h = F.linear(flat[token], gate_up[e], None if gate_up_bias is None else gate_up_bias[e])
        g, u = (h[:, 0::2], h[:, 1::2]) if interleaved else (h[:, :inter], h[:, inter:])
        y = F.linear(act_fn(g, u), down[e], None if down_bias is None else down_bias[e])
        out.index_add_(0, token, y * top_w[token, slot, None])
    return out.reshape(x.shape)


EXPERT_TARGETS = {"gate_proj": "gate_up_lora", "up_proj": "gate_up_lora", "down_proj": "down_lora"}
"""loris' target names → the expert adapters they switch on (gate and up share one stacked weight)."""


def inject_expert_lora(model, cfg: LoraConfig) -> int:
    """`ExpertLora` on the stacked expert weights the targets name (gate_proj or up_proj: the fused
    gate/up weight; down_proj: the down weight), in every MoE layer of ``layers_to_transform``.
    Returns how many were added. Experts take no dropout (PEFT's expert adapters have none)."""
    wanted = sorted({EXPERT_TARGETS[t] for t in cfg.target_modules if t in EXPERT_TARGETS})
    # PEFT reads gate_proj + up_proj on these models as one adapter of rank 2r (alpha 2·alpha) on the
    # fused weight, as if the two adapters it once had per expert were stacked; loris does the same.
    fused = sum(t in cfg.target_modules for t in ("gate_proj", "up_proj")) or 1
    ranks = {"gate_up_lora": cfg.r * fused, "down_lora": cfg.r}
    layers = set(cfg.layers_to_transform) if cfg.layers_to_transform is not None else None
    added = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.random_state + 1)
        for i, block in enumerate(model.layers):
            if not isinstance(block.mlp, SparseMoE) or (layers is not None and i not in layers):
                continue
            ex = block.mlp.experts
            device = block.mlp.gate.weight.device
            for slot in wanted:
                e, out_f, in_f = ex.out_in_shape(_SLOT_WEIGHT[slot])
                r = ranks[slot]
                scaling = cfg.lora_alpha * r / cfg.r / (math.sqrt(r) if cfg.use_rslora else r)
                lora = ExpertLora(e, in_f, out_f, r, scaling, device=device)
                lora.reset_parameters(cfg.init_lora_weights)
                setattr(ex, slot, lora)
                added += 1
    return added


_SLOT_WEIGHT = {"gate_up_lora": "gate_up_proj", "down_lora": "down_proj"}


def expert_weight(experts: Experts, slot: str) -> torch.Tensor:
    """The stacked base weight an expert adapter slot updates, as (experts, out, in) like the
    adapter's `ExpertLora.delta_weight` (dequantized, fp32, if 4-bit)."""
    name = _SLOT_WEIGHT[slot]
    if getattr(experts, name + "_q") is None:
        w = getattr(experts, name)
    else:
        w = experts.weight(name, torch.float32)
    return _as_out_in(w, experts.transposed)
