"""The merged model as Hugging Face-named tensors, planned up front and computed one at a time.

Both exporters (merged safetensors and GGUF) start here. A plan lists every output tensor with its
HF name, shape and a thunk that computes it (base weight + LoRA delta, Phi-3's projections re-fused),
so a writer can group tensors into shards by size and hold only one shard's worth in memory.

For a 4-bit or 8-bit base the LoRA update is merged into the *original* 16-bit weights when they are
at hand (the checkpoint folder the model was loaded from, or the Hugging Face cache), because
merging into dequantized NF4 bakes the quantization error into the exported weights.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loris.lora import LoraLinear
from loris.models.families import NameMapper, Split
from loris.models.moe import Experts, expert_weight
from loris.models.state import model_state
from loris.quant import QuantizedLinear

logger = logging.getLogger(__name__)


@dataclass
class PlannedTensor:
    """One output tensor: its HF name, shape, and how to compute it (fp32 or the model's dtype)."""

    name: str
    shape: tuple[int, ...]
    compute: Callable[[], torch.Tensor]
    is_projection: bool = False  # a linear weight (quantizable as 4-bit)

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


# ---------------------------------------------------------------------------------- original weights


class OriginalWeights:
    """Read-only, tensor-by-tensor access to a 16-bit HF checkpoint folder under loris names."""

    def __init__(self, folder: Path, mapper: NameMapper):
        from loris.models.loading import _checkpoint_files

        self.folder = Path(folder)
        self.mapper = mapper
        self._files = [f for f in _checkpoint_files(self.folder) if f.suffix == ".safetensors"]
        if not self._files:
            raise FileNotFoundError(f"{folder} holds no safetensors weights")
        self._where: dict[str, Path] = {}
        from safetensors import safe_open

        for f in self._files:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    self._where[key] = f
        self._sources = _loris_to_hf_sources(mapper, self._where)

    def get_hf(self, hf_name: str) -> torch.Tensor | None:
        """The original tensor of an HF name, or None if the checkpoint has none."""
        where = self._where.get(hf_name)
        if where is None:
            return None
        from safetensors import safe_open

        with safe_open(str(where), framework="pt") as sf:
            return sf.get_tensor(hf_name)

    def get(self, loris_weight_name: str) -> torch.Tensor | None:
        """The original tensor for a loris parameter name (a slice of a fused HF tensor for Phi-3)."""
        src = self._sources.get(loris_weight_name)
        if src is None:
            return None
        hf_name, part, sizes = src
        from safetensors import safe_open

        with safe_open(str(self._where[hf_name]), framework="pt") as sf:
            t = sf.get_tensor(hf_name)
        if part is None:
            return t
        return torch.split(t, sizes, dim=0)[part].clone()


def _loris_to_hf_sources(
    mapper: NameMapper, hf_names: dict[str, Path]
) -> dict[str, tuple[str, int | None, tuple[int, ...] | None]]:
    out: dict[str, tuple[str, int | None, tuple[int, ...] | None]] = {}
    for hf_name in hf_names:
        target = mapper.to_loris(hf_name)
        if isinstance(target, Split):
            sizes = tuple(target.sizes(mapper.cfg))
            for i, t in enumerate(target.targets):
                out[t] = (hf_name, i, sizes)
        elif isinstance(target, str):
            out[target] = (hf_name, None, None)
    return out


def _is_16bit_checkpoint(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.exists():
        return False
    raw = json.loads(cfg.read_text())
    return raw.get("quantization_config") is None


def _hub_cache_folder(repo_id: str) -> Path | None:
    """A cached snapshot of ``repo_id`` (never a download), or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.json", "*.safetensors"])
        )
    except Exception:  # not cached, malformed id, offline: all mean "not at hand"
        return None


_BNB_SUFFIX = re.compile(r"-(bnb-4bit|bnb-8bit|unsloth-bnb-4bit)$")


def find_original_weights(model) -> OriginalWeights | None:
    """The 16-bit weights the quantized model was made from, if this machine has them."""
    mapper = NameMapper(model.config)
    candidates: list[Path] = []
    state = model_state(model)
    folder = state.source_folder
    if folder is not None and state.source_gguf_file is None:
        candidates.append(Path(folder))
    name = str(state.name_or_path or "")
    if name and not Path(name).exists() and "/" in name:
        for repo in dict.fromkeys([_BNB_SUFFIX.sub("", name), name]):
            cached = _hub_cache_folder(repo)
            if cached is not None:
                candidates.append(cached)
    for c in candidates:
        if not _is_16bit_checkpoint(c):
            continue
        try:
            weights = OriginalWeights(c, mapper)
        except (FileNotFoundError, OSError, ValueError) as e:
            logger.debug("original weights at %s unusable: %s", c, e)
            continue
        if _shapes_match(model, weights):
            return weights
    return None


def _shapes_match(model, weights: OriginalWeights) -> bool:
    for name, module in model.named_modules():
        base = module.base if isinstance(module, LoraLinear) else module
        if isinstance(base, QuantizedLinear):
            t = weights.get(name + ".weight")
            return t is not None and tuple(t.shape) == (base.out_features, base.in_features)
    return True


def has_quantized_base(model) -> bool:
    return any(isinstance(m, QuantizedLinear) for m in model.modules())


# ---------------------------------------------------------------------------------- the plan


def _projection_weight(
    name: str, module: nn.Module, original: OriginalWeights | None
) -> Callable[[], torch.Tensor]:
    """Thunk: the merged fp32 weight of one projection slot."""
    lora = module if isinstance(module, LoraLinear) else None
    base = lora.base if lora is not None else module

    def compute() -> torch.Tensor:
        with torch.no_grad():
            if isinstance(base, QuantizedLinear):
                w = original.get(name + ".weight") if original is not None else None
                w = base.dequantize(torch.float32) if w is None else w.to(base.weight.device)
                w = w.float()
            else:
                w = base.weight.detach().float()
                if lora is not None and lora.merged:  # already folded in: remove to re-add exactly once
                    w = w - lora.delta_weight().float()
            if lora is not None:
                w = w + lora.delta_weight().float().to(w.device)
            return w.cpu()

    return compute


def _shape_of(module: nn.Module) -> tuple[int, int]:
    return (int(module.out_features), int(module.in_features))


def _loris_tensors(
    model, original: OriginalWeights | None
) -> list[tuple[str, tuple[int, ...], Callable[[], torch.Tensor], bool]]:
    """(loris name, shape, thunk, is_projection) for every tensor of the merged model, in module order."""
    out = []
    skip_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(module, Experts):
            skip_prefixes.append(name + ".")
            out.extend(_expert_tensors(name, module, original))
            continue
        if isinstance(module, (LoraLinear, QuantizedLinear)) or (
            isinstance(module, nn.Linear) and name != "lm_head"
        ):
            skip_prefixes.append(name + ".")
            base = module.base if isinstance(module, LoraLinear) else module
            out.append((name + ".weight", _shape_of(base), _projection_weight(name, module, original), True))
            if base.bias is not None:
                bias = base.bias
                out.append(
                    (name + ".bias", tuple(bias.shape), lambda b=bias: b.detach().float().cpu(), False)
                )
            continue
        for pname, p in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            out.append((full, tuple(p.shape), lambda p=p: p.detach().float().cpu(), False))
    return out


def _stacked_expert_tensors(name: str, experts: Experts, original: OriginalWeights | None) -> list:
    """gpt-oss' layout: each projection one stacked (experts, in, out) tensor under transformers'
    name (``<layer>.mlp.experts.gate_up_proj``), LoRA merged, plus the expert biases. A 4-bit stack
    is merged into the original 16-bit stack when it is at hand, else into its dequantized form."""
    quantized = experts.gate_up_proj_q is not None or experts.down_proj_q is not None

    def thunk(proj: str, slot: str):
        def compute() -> torch.Tensor:
            w = original.get_hf(f"model.{name}.{proj}") if quantized and original else None
            with torch.no_grad():
                if w is None:
                    w = expert_weight(experts, slot).detach().float().cpu()  # (experts, out, in)
                else:
                    w = w.float().transpose(1, 2)
                lora = getattr(experts, slot)
                if lora is not None and not lora.disabled:
                    w = w + lora.delta_weight().float().cpu()
            return w.transpose(1, 2).contiguous()

        return compute

    out = []
    for proj, slot in (("gate_up_proj", "gate_up_lora"), ("down_proj", "down_lora")):
        out.append((f"{name}.{proj}", experts.shapes[proj], thunk(proj, slot), False))
        bias = getattr(experts, proj + "_bias")
        if bias is not None:
            out.append(
                (f"{name}.{proj}_bias", tuple(bias.shape), lambda b=bias: b.detach().float().cpu(), False)
            )
    return out


def _expert_tensors(name: str, experts: Experts, original: OriginalWeights | None) -> list:
    """Each expert's gate, up and down weight (LoRA merged) under transformers' per-expert names,
    ``<layer>.mlp.experts.<e>.<proj>.weight``, as Hub checkpoints store them. A 4-bit stack is
    merged into the original 16-bit expert weights when they are at hand, else dequantized once per
    projection (the thunks run in plan order, projection by projection)."""
    if experts.transposed:
        return _stacked_expert_tensors(name, experts, original)
    inter = experts.intermediate
    last: dict[str, torch.Tensor] = {}

    def stack(slot: str) -> torch.Tensor:
        if slot not in last:
            last.clear()
            with torch.no_grad():
                w = expert_weight(experts, slot).detach().float()
                lora = getattr(experts, slot)
                if lora is not None and not lora.disabled:
                    w = w + lora.delta_weight().float().to(w.device)
            last[slot] = w
        return last[slot]

    quantized = experts.gate_up_proj_q is not None or experts.down_proj_q is not None

    def thunk(slot: str, e: int, rows: slice, proj: str):
        def compute() -> torch.Tensor:
            w = original.get_hf(f"model.{name}.{e}.{proj}.weight") if quantized and original else None
            if w is None:
                return stack(slot)[e, rows].cpu().clone()
            lora = getattr(experts, slot)
            w = w.float()
            if lora is not None and not lora.disabled:
                with torch.no_grad():
                    delta = (lora.lora_B[e] @ lora.lora_A[e]) * lora.scaling
                w = w + delta[rows].float().cpu()
            return w

        return compute

    out = []
    hidden = experts.shapes["down_proj"][1]
    for proj, slot, rows in (
        ("gate_proj", "gate_up_lora", slice(0, inter)),
        ("up_proj", "gate_up_lora", slice(inter, 2 * inter)),
        ("down_proj", "down_lora", slice(None)),
    ):
        shape = (hidden, inter) if proj == "down_proj" else (inter, hidden)
        for e in range(experts.num_experts):
            out.append((f"{name}.{e}.{proj}.weight", shape, thunk(slot, e, rows, proj), True))
    return out


def lm_head_is_tied(model) -> bool:
    return bool(model.config.tie_word_embeddings) and model.lm_head.weight is model.embed_tokens.weight


def plan_merged_tensors(model, original: OriginalWeights | None = None) -> list[PlannedTensor]:
    """Every tensor of the merged model under its HF name; thunks return fp32 CPU tensors.

    A tied LM head is left out (the config says it is tied). Phi-3's q/k/v and gate/up come out
    re-fused as ``qkv_proj`` / ``gate_up_proj``, as its HF checkpoints store them.
    """
    cfg = model.config
    mapper = NameMapper(cfg)
    tied = lm_head_is_tied(model)
    by_name = {}
    order: list[str] = []
    for lname, shape, thunk, is_proj in _loris_tensors(model, original):
        if lname == "lm_head.weight" and tied:
            continue
        by_name[lname] = (shape, thunk, is_proj)
        order.append(lname)

    fused: dict[str, tuple[str, ...]] = {}  # first part name → all part names, keyed to an HF name
    fused_hf: dict[str, str] = {}
    for hf_template, target in mapper.map.items():
        if not isinstance(target, Split):
            continue
        for i in range(cfg.num_layers):
            parts = tuple(t.format(i) for t in target.targets)
            if all(p in by_name for p in parts):
                fused[parts[0]] = parts
                fused_hf[parts[0]] = hf_template.format(i)

    plan: list[PlannedTensor] = []
    consumed: set[str] = set()
    for lname in order:
        if lname in consumed:
            continue
        if lname in fused:
            parts = fused[lname]
            thunks = [by_name[p][1] for p in parts]
            rows = sum(by_name[p][0][0] for p in parts)
            cols = by_name[parts[0]][0][1]
            plan.append(
                PlannedTensor(
                    fused_hf[lname],
                    (rows, cols),
                    lambda ts=thunks: torch.cat([t() for t in ts], dim=0),
                    is_projection=True,
                )
            )
            consumed.update(parts)
            continue
        shape, thunk, is_proj = by_name[lname]
        plan.append(PlannedTensor(mapper.to_hf(lname), shape, thunk, is_projection=is_proj))
    return plan


def merged_plan_for_export(model) -> tuple[list[PlannedTensor], str]:
    """The plan plus a sentence saying which base weights the LoRA update was merged into."""
    original = None
    if has_quantized_base(model):
        original = find_original_weights(model)
        if original is not None:
            source = f"the original unquantized weights in {original.folder}"
        else:
            source = (
                "the dequantized 4-bit/8-bit weights (the original 16-bit checkpoint is not on this "
                "machine; the export carries the quantization error)"
            )
    else:
        source = f"the model's own {str(model.dtype).removeprefix('torch.')} weights"
    return plan_merged_tensors(model, original), source
