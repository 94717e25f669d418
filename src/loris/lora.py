"""LoRA: low-rank adapters in the projection slots of a `LorisForCausalLM`.

``y = base(x) + (dropout(x) @ A^T @ B^T) * scaling`` with the base weight frozen (16-bit, NF4 or
int8) and A, B trainable in fp32. ``get_peft_model`` takes Unsloth's arguments; adapters save and load
in PEFT's format (see `loris.peft_format`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loris.kernels import kernels_disabled
from loris.kernels.activations import ACTIVATION_IDS
from loris.kernels.grouped_linear import grouped_linear
from loris.kernels.lora_fused import lora_mlp, lora_packed, lora_projections, memo_on
from loris.models.packing import packed_view
from loris.quant import QuantizedLinear

logger = logging.getLogger(__name__)

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SAVABLE_MODULES = ("embed_tokens", "lm_head")


@dataclass
class LoraConfig:
    """What was asked of `get_peft_model`, in PEFT's field names (written to adapter_config.json)."""

    r: int = 16
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | None = None
    random_state: int = 3407
    known_modules: tuple[str, ...] = field(default=PROJECTIONS, repr=False)
    """The names ``target_modules`` may hold: loris' projections, or a generic model's linear layers."""

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int):
            raise TypeError(f"r must be a positive int (the LoRA rank), got {self.r!r}")
        if self.r <= 0:
            raise ValueError(f"r must be a positive int (the LoRA rank), got {self.r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.bias != "none":
            raise ValueError(f"bias={self.bias!r} is not supported: loris trains LoRA with bias='none'")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError(
                f"init_lora_weights={self.init_lora_weights!r}: use True (PEFT's default), False or 'gaussian'"
            )
        self.target_modules = _normalise_targets(self.target_modules, self)
        if self.modules_to_save:
            bad = [m for m in self.modules_to_save if m not in SAVABLE_MODULES]
            if bad:
                raise ValueError(f"modules_to_save may hold only {list(SAVABLE_MODULES)}, got {bad}")
            self.modules_to_save = list(dict.fromkeys(self.modules_to_save))
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normalise_targets(targets, cfg: LoraConfig) -> list[str]:
    if targets in ("all-linear", "all_linear", None):
        return list(cfg.known_modules)
    if isinstance(targets, str):
        targets = [targets]
    out = []
    for t in targets:
        if t in SAVABLE_MODULES:  # Unsloth moves these to modules_to_save
            cfg.modules_to_save = [*(cfg.modules_to_save or []), t]
            continue
        if t not in cfg.known_modules:
            raise ValueError(
                f"unknown target module {t!r}; valid: {', '.join(cfg.known_modules)} (or embed_tokens, lm_head)"
            )
        out.append(t)
    if not out and not cfg.modules_to_save:
        raise ValueError("target_modules is empty: name at least one of " + ", ".join(cfg.known_modules))
    return list(dict.fromkeys(out))


def _fast(x: torch.Tensor) -> bool:
    """Whether the fused paths run for ``x`` (CUDA, kernels not disabled); tests switch it on CPU."""
    return x.is_cuda and not kernels_disabled()


def _all_fusable(mods) -> bool:
    return all(isinstance(m, LoraLinear) and m.fusable() for m in mods)


def _fused_path(x: torch.Tensor, mods) -> bool:
    return _fast(x) and _all_fusable(mods)


def _plain(m: nn.Module) -> bool:
    """A slot that computes exactly its base linear (no adapter, or one that is off or merged)."""
    return type(m) is nn.Linear or (isinstance(m, LoraLinear) and (m.disabled or m.merged))


def _packed(x: torch.Tensor, mods):
    """("plain" | "lora", weight, bias) when ``mods``' base weights are stacked in one buffer
    (`loris.models.packing`) and the fused path applies; else None."""
    if not _fast(x):
        return None
    if all(_plain(m) for m in mods):
        kind = "plain"
    elif _all_fusable(mods):
        kind = "lora"
    else:
        return None
    view = packed_view([getattr(m, "base", m) for m in mods])
    return None if view is None else (kind, *view)


def project(x: torch.Tensor, mods) -> tuple[torch.Tensor, ...]:
    """Several projections of one input (q/k/v): one GEMM over stacked base weights when they are
    packed, LoRA slots through the fused path on CUDA, else one module at a time."""
    packed = _packed(x, mods)
    if packed is not None:
        kind, weight, bias = packed
        y = F.linear(x, weight, bias) if kind == "plain" else lora_packed(x, mods, weight, bias)
        return y.split([m.out_features for m in mods], dim=-1)
    if _fused_path(x, mods):
        return lora_projections(x, mods)
    return tuple(m(x) for m in mods)


def gated_mlp(
    x: torch.Tensor, gate, up, down, activation: str, act_fn, output_unused: bool = False
) -> torch.Tensor:
    """``down(act(gate(x)) * up(x))``; the fused LoRA MLP on CUDA when all three are LoRA slots,
    with gate and up as one GEMM when their weights are packed. With ``output_unused`` (the result
    is only back-propagated through), the fused MLP returns a placeholder of the right shape instead
    of computing it."""
    packed = _packed(x, (gate, up))
    if packed is not None and packed[0] == "plain":
        g, u = F.linear(x, packed[1], packed[2]).split(gate.out_features, dim=-1)
        return down(act_fn(g, u))
    if _fused_path(x, (gate, up, down)):
        return lora_mlp(
            x,
            gate,
            up,
            down,
            ACTIVATION_IDS[activation],
            packed=packed and packed[1:],
            skip_output=output_unused,
        )
    return down(act_fn(gate(x), up(x)))


class LoraLinear(nn.Module):
    """A frozen base linear plus a trainable low-rank update, in fp32."""

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        in_f, out_f = _features(base)
        device = _device_of(base)
        self.lora_A = nn.Parameter(torch.empty(r, in_f, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(out_f, r, device=device, dtype=torch.float32))
        self.r, self.scaling, self.dropout = r, scaling, dropout
        self.merged = False
        self.disabled = False

    @property
    def in_features(self) -> int:
        return self.lora_A.shape[1]

    @property
    def out_features(self) -> int:
        return self.lora_B.shape[0]

    @property
    def bias(self):
        return self.base.bias

    @property
    def weight(self) -> torch.Tensor:
        """The base weight as stored (packed bytes for quantized bases)."""
        return self.base.weight

    def reset_parameters(self, init: bool | str = True) -> None:
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.r)
            else:  # PEFT's default (and `False`, which then also randomises B)
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            if init is False:
                nn.init.normal_(self.lora_B, std=0.02)
            else:
                self.lora_B.zero_()

    def adapter_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) in ``dtype`` for the fused path, cast once per optimizer step rather than per use
        (one memo per dtype, so alternating dtypes never swap out tensors a decode graph reads).

        The memo is keyed on the parameters' version counters, which every in-place write bumps
        (optimizer steps, ``copy_`` under ``torch.no_grad()``, ``load_state_dict``) except writes
        through ``.data``: after one of those, the next optimizer step (or any in-place write)
        brings the copies up to date."""
        a, b = self.lora_A, self.lora_B
        if a.dtype == dtype and b.dtype == dtype:
            return a, b
        key = (dtype, a._version, a.data_ptr(), b._version, b.data_ptr())

        def refill(old: tuple[torch.Tensor, torch.Tensor]) -> bool:
            if old[0].shape != a.shape or old[1].shape != b.shape or old[0].device != a.device:
                return False
            old[0].copy_(a)  # cast in the copy
            old[1].copy_(b)
            return True

        return memo_on(
            self, f"_adapter_cache_{dtype}", key, lambda: (a.detach().to(dtype), b.detach().to(dtype)), refill
        )

    def fusable(self) -> bool:
        """Whether the fused LoRA path (loris.kernels.lora_fused) computes exactly this module."""
        base_frozen = not any(p.requires_grad for p in self.base.parameters(recurse=False))
        return not (self.merged or self.disabled) and base_frozen and (self.dropout == 0 or not self.training)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_path(x, (self,)):
            return lora_projections(x, (self,))[0]
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        h = h.to(self.lora_A.dtype) if not torch.is_autocast_enabled(x.device.type) else h
        update = (h @ self.lora_A.t()) @ self.lora_B.t()
        return y + (update * self.scaling).to(y.dtype)

    def merge(self) -> None:
        """Fold the update into a 16-bit base weight (quantized bases merge at export time instead)."""
        if self.merged:
            return
        if isinstance(self.base, QuantizedLinear):
            raise TypeError(
                "cannot merge into a quantized base in place; export with save_pretrained_merged instead"
            )
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, dropout={self.dropout}"


class ExpertLora(nn.Module):
    """Trainable low-rank updates for every expert of one stacked weight (experts, out, in), in fp32."""

    def __init__(
        self, experts: int, in_features: int, out_features: int, r: int, scaling: float, device=None
    ):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(experts, r, in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(experts, out_features, r, device=device, dtype=torch.float32))
        self.r, self.scaling = r, scaling
        self.disabled = False
        self.merged = False

    def reset_parameters(self, init: bool | str = True) -> None:
        """PEFT's initialisation of its (r·experts, in) ``lora_A``: Kaiming-uniform over the input
        dimension (every expert alike), B zero; ``False`` randomises B too, ``"gaussian"`` A normal."""
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.r)
            else:
                bound = 1.0 / math.sqrt(self.lora_A.shape[-1])  # kaiming_uniform_(a=sqrt(5)) on fan_in
                nn.init.uniform_(self.lora_A, -bound, bound)
            if init is False:
                nn.init.normal_(self.lora_B, std=0.02)
            else:
                self.lora_B.zero_()

    @property
    def active(self) -> bool:
        return not (self.disabled or self.merged)

    def delta_weight(self) -> torch.Tensor:
        """(experts, out, in): the update each expert's weight receives."""
        return torch.bmm(self.lora_B, self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The update for rows ``x`` sorted by expert (``offsets``: cumulative row ends, int32)."""

        dtype = x.dtype if x.is_cuda else self.lora_A.dtype
        h = grouped_linear(x.to(dtype), self.lora_A.to(dtype), offsets)
        return grouped_linear(h, self.lora_B.to(dtype), offsets) * self.scaling

    def extra_repr(self) -> str:
        return f"experts={self.lora_A.shape[0]}, r={self.r}, scaling={self.scaling:g}"


def _features(base: nn.Module) -> tuple[int, int]:
    return int(base.in_features), int(base.out_features)


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------- model-level


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


def inject_lora(model, cfg: LoraConfig) -> None:
    """Replace the targeted projection slots with `LoraLinear` wrappers, then freeze everything else."""
    layers = set(cfg.layers_to_transform) if cfg.layers_to_transform is not None else None
    n_layers = model.config.num_layers
    if layers is not None and not layers <= set(range(n_layers)):
        raise ValueError(f"layers_to_transform {sorted(layers)} outside 0..{n_layers - 1}")
    for p in model.parameters():
        p.requires_grad_(False)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.random_state)
    try:
        for i, block in enumerate(model.layers):
            if layers is not None and i not in layers:
                continue
            # On a Mixture-of-Experts model gate/up/down name the experts' stacked weights, as PEFT
            # reads them there (loris.models.moe.inject_expert_lora); its few dense MLPs stay frozen.
            parents = (block.self_attn,) if model.config.moe is not None else (block.self_attn, block.mlp)
            for parent in parents:
                for name in cfg.target_modules:
                    base = getattr(parent, name, None)
                    if base is None:
                        continue
                    lora = LoraLinear(base, cfg.r, cfg.scaling, cfg.lora_dropout)
                    lora.reset_parameters(cfg.init_lora_weights)
                    setattr(parent, name, lora)
    finally:
        torch.random.set_rng_state(generator_state)
    for name in cfg.modules_to_save or []:
        _make_trainable_module(model, name)


def _make_trainable_module(model, name: str) -> None:
    """Train embed_tokens / lm_head fully (fp32 master copy); untie them first if they share storage."""
    if model.config.tie_word_embeddings and model.lm_head.weight is model.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone(), requires_grad=False)
        model.untied_for_training = True
    module = getattr(model, name)
    module.weight = nn.Parameter(module.weight.detach().float(), requires_grad=True)


def expert_lora_modules(model: nn.Module) -> Iterator[tuple[str, ExpertLora]]:
    for name, module in model.named_modules():
        if isinstance(module, ExpertLora):
            yield name, module


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """Run the base model (e.g. the reference policy in GRPO) without a second copy of the weights."""
    mods = [m for _, m in lora_modules(model)] + [m for _, m in expert_lora_modules(model)]
    previous = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield
    finally:
        for m, p in zip(mods, previous, strict=True):
            m.disabled = p


def count_parameters(model) -> tuple[int, int]:
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # packed 4-bit holds two weights a byte
        total += n
        trainable += n if p.requires_grad else 0
    for module in model.modules():  # quantized weights are buffers
        if isinstance(module, QuantizedLinear):
            w = module.weight
            total += w.numel() * (2 if w.dtype == torch.uint8 else 1)
    return trainable, total
