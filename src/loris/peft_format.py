"""PEFT's on-disk adapter format, both ways: adapter_config.json + adapter_model.safetensors.

Keys follow PEFT (``base_model.model.<HF module path>.lora_A.weight``), so PEFT loads a loris adapter
onto the transformers model and loris loads a PEFT-made one. Families whose HF checkpoints fuse
projections (Phi-3's qkv_proj / gate_up_proj) are written as one fused adapter per fused module:
A stacked, B block-diagonal, with rank_pattern / alpha_pattern keeping each part's scaling.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from loris.file_modes import as_if_created_tree
from loris.lora import PROJECTIONS, ExpertLora, LoraConfig, LoraLinear, expert_lora_modules, lora_modules
from loris.models.families import NameMapper, Split
from loris.models.state import model_state

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def _fused_groups(mapper: NameMapper) -> dict[str, tuple[str, ...]]:
    """HF fused module template → the loris module templates it splits into."""
    groups = {}
    for hf, target in mapper.map.items():
        if isinstance(target, Split):
            groups[hf.removesuffix(".weight")] = tuple(t.removesuffix(".weight") for t in target.targets)
    return groups


def _hf_module(mapper: NameMapper, loris_module: str) -> str:
    return mapper.to_hf(loris_module + ".weight").removesuffix(".weight")


def adapter_state_dict(model) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """PEFT-named tensors and the extra config entries (rank/alpha patterns, target modules)."""
    cfg: LoraConfig = model_state(model).peft_config
    mapper = NameMapper(model.config)
    loras = dict(lora_modules(model))
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    targets: set[str] = set()
    done: set[str] = set()
    for hf_template, parts in _fused_groups(mapper).items():
        pattern = re.compile("^" + re.escape(parts[0]).replace(r"\{\}", r"(\d+)") + "$")
        for name in list(loras):
            m = pattern.match(name)
            if not m:
                continue
            names = [p.format(*m.groups()) for p in parts]
            if not all(n in loras for n in names):
                continue  # only some parts adapted: saved unfused below, under transformers' names
            mods = [loras[n] for n in names]
            hf_module = hf_template.format(*m.groups())
            a = torch.cat([mm.lora_A * math.sqrt(mm.scaling) for mm in mods], dim=0)
            b = torch.block_diag(*[mm.lora_B * math.sqrt(mm.scaling) for mm in mods])
            r = a.shape[0]  # each part's scaling is folded into A and B; alpha below makes PEFT's scale 1
            short = hf_module.rsplit(".", 1)[-1]
            rank_pattern[short] = r
            alpha_pattern[short] = math.sqrt(r) if cfg.use_rslora else float(r)
            tensors[f"{PEFT_PREFIX}{hf_module}.lora_A.weight"] = a.detach()
            tensors[f"{PEFT_PREFIX}{hf_module}.lora_B.weight"] = b.detach()
            targets.add(short)
            done.update(names)
    for name, mod in loras.items():
        if name in done:
            continue
        hf_module = _hf_module(mapper, name)
        tensors[f"{PEFT_PREFIX}{hf_module}.lora_A.weight"] = mod.lora_A.detach()
        tensors[f"{PEFT_PREFIX}{hf_module}.lora_B.weight"] = mod.lora_B.detach()
        targets.add(hf_module.rsplit(".", 1)[-1])
    for module in cfg.modules_to_save or []:
        hf_name = mapper.to_hf(f"{module}.weight")
        tensors[PEFT_PREFIX + hf_name] = getattr(model, module).weight.detach()
    extra = {"target_modules": sorted(targets), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}
    parameters = _expert_tensors(model, mapper, tensors, rank_pattern, alpha_pattern)
    if parameters:
        extra["target_parameters"] = parameters
    return {k: v.contiguous() for k, v in tensors.items()}, extra


# PEFT adapts a stacked expert weight with ``target_parameters``: a ParamWrapper around the experts
# module, lora_A (r·E, in) and lora_B (out, r·E), expert e's pair being A.view(E, r, in)[e] and
# B.view(out, r, E)[..., e]. Two targeted weights of one module nest: the weight registered first
# (gate_up_proj) is wrapped first, so its keys carry an extra ``base_layer.``.
_EXPERT_PARAMS = {"gate_up_lora": "gate_up_proj", "down_lora": "down_proj"}


def _expert_keys(experts_module: str, slots: set[str]) -> dict[str, str]:
    """PEFT key prefix of each adapted expert weight of one experts module."""
    nested = len(slots) == 2
    return {
        slot: f"{PEFT_PREFIX}{experts_module}." + ("base_layer." if nested and slot == "gate_up_lora" else "")
        for slot in slots
    }


def _expert_tensors(
    model, mapper: NameMapper, tensors: dict[str, torch.Tensor], rank_pattern: dict, alpha_pattern: dict
) -> list[str]:
    """Add the expert adapters in PEFT's layout; returns the ``target_parameters`` they need. An
    adapter of another rank than ``r`` (the fused gate/up one, rank 2r) gets PEFT's pattern entries."""
    cfg: LoraConfig = model_state(model).peft_config
    by_module: dict[str, dict[str, ExpertLora]] = {}
    for name, mod in expert_lora_modules(model):
        parent, _, slot = name.rpartition(".")
        by_module.setdefault(parent, {})[slot] = mod
    params: set[str] = set()
    for parent, slots in by_module.items():
        hf_module = mapper.to_hf(parent + ".gate_up_proj").removesuffix(".gate_up_proj")
        for slot, prefix in _expert_keys(hf_module, set(slots)).items():
            mod = slots[slot]
            e, r, in_f = mod.lora_A.shape
            tensors[prefix + "lora_A.weight"] = mod.lora_A.detach().reshape(e * r, in_f)
            tensors[prefix + "lora_B.weight"] = mod.lora_B.detach().permute(1, 2, 0).reshape(-1, r * e)
            params.add("mlp.experts." + _EXPERT_PARAMS[slot])
            if r != cfg.r:
                key = ".*\\." + _EXPERT_PARAMS[slot]
                rank_pattern[key] = r
                alpha_pattern[key] = cfg.lora_alpha * r / cfg.r
    return sorted(params)


def peft_config_dict(model, extra: dict[str, Any]) -> dict[str, Any]:
    state = model_state(model)
    cfg: LoraConfig = state.peft_config
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": state.name_or_path,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "bias": cfg.bias,
        "use_rslora": cfg.use_rslora,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": cfg.init_lora_weights,
        "layers_to_transform": cfg.layers_to_transform,
        "layers_pattern": None,
        "modules_to_save": cfg.modules_to_save,
        "inference_mode": True,
        "revision": None,
        **extra,
    }


def save_adapter(model, save_directory: str | os.PathLike) -> Path:
    """Write the adapter atomically (temp folder, then rename into place)."""
    from safetensors.torch import save_file

    if model_state(model).peft_config is None:
        raise ValueError("this model has no LoRA adapter: call FastLanguageModel.get_peft_model first")
    out = Path(save_directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors, extra = adapter_state_dict(model)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_config_dict(model, extra), indent=2))
        as_if_created_tree(tmp)  # safetensors writes 0o600; give what a plain open() would
        if out.exists():
            for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                os.replace(tmp / f, out / f)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------- loading


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / ADAPTER_CONFIG
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: only LoRA adapters are supported, got peft_type={cfg.get('peft_type')!r}")
    if cfg.get("use_dora"):
        raise ValueError(f"{path}: DoRA adapters are not supported")
    return cfg


def lora_config_from_peft(cfg: dict[str, Any], known_modules: tuple[str, ...] = PROJECTIONS) -> LoraConfig:
    """loris' settings for a PEFT adapter config; ``known_modules``: the target names the model has
    (a generic model's own linear layers; fused names split only where the model has no such layer)."""
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets] if targets not in ("all-linear",) else "all-linear"
    expanded: list[str] = []
    for t in targets if isinstance(targets, list) else []:
        short = t.rsplit(".", 1)[-1]
        if short in known_modules:
            expanded.append(short)
        elif short == "qkv_proj":
            expanded += ["q_proj", "k_proj", "v_proj"]
        elif short == "gate_up_proj":
            expanded += ["gate_proj", "up_proj"]
        else:
            expanded.append(short)
    for param in cfg.get("target_parameters") or []:  # stacked expert weights (MoE)
        if param.endswith("gate_up_proj"):
            expanded += ["gate_proj", "up_proj"]
        elif param.endswith("down_proj"):
            expanded.append("down_proj")
    init = cfg.get("init_lora_weights", True)
    return LoraConfig(
        r=int(cfg["r"]),
        lora_alpha=cfg.get("lora_alpha", 8),
        lora_dropout=cfg.get("lora_dropout", 0.0) or 0.0,
        target_modules=list(dict.fromkeys(expanded)) if isinstance(targets, list) else targets,
        bias=cfg.get("bias", "none"),
        use_rslora=bool(cfg.get("use_rslora", False)),
        modules_to_save=cfg.get("modules_to_save"),
        init_lora_weights=init if init in (True, False, "gaussian") else True,
        layers_to_transform=cfg.get("layers_to_transform"),
        known_modules=known_modules,
    )


def _load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / ADAPTER_WEIGHTS).exists():
        from loris.models.weights_file import load_safetensors

        return load_safetensors(folder / ADAPTER_WEIGHTS)
    if (folder / "adapter_model.bin").exists():
        return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS} (or adapter_model.bin)")


def _pattern(patterns: dict[str, Any] | None, short: str, default):
    """A rank/alpha pattern entry for module ``short``: its own name, or a key ending in it (PEFT
    writes ``.*\\.gate_up_proj`` for the fused expert adapter)."""
    patterns = patterns or {}
    if short in patterns:
        return patterns[short]
    return next((v for k, v in patterns.items() if k.endswith("." + short)), default)


def _scaling_for(cfg: dict[str, Any], short: str, rank: int) -> float:
    """PEFT's scaling of one module, honouring rank_pattern / alpha_pattern."""
    alpha = _pattern(cfg.get("alpha_pattern"), short, cfg.get("lora_alpha", 8))
    r = _pattern(cfg.get("rank_pattern"), short, rank)
    return alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def load_adapter_weights(model, folder: str | os.PathLike, peft_cfg: dict[str, Any]) -> None:
    """Copy a PEFT adapter's tensors into the model's (already injected) LoRA modules."""
    folder = Path(folder)
    tensors = _load_tensors(folder)
    mapper = NameMapper(model.config)
    loras = dict(lora_modules(model))
    loaded_experts = _load_expert_tensors(model, mapper, tensors, peft_cfg, folder)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).replace(".default.", ".")
        m = re.match(r"^(.*)\.(lora_A|lora_B)\.weight$", name)
        if m:
            by_module.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        target = mapper.to_loris(name)
        if isinstance(target, str) and any(
            target.startswith(s + ".") for s in peft_cfg.get("modules_to_save") or []
        ):
            module = getattr(model, target.split(".")[0])
            module.weight.data.copy_(value.to(module.weight.dtype))
            continue
        raise ValueError(f"unexpected tensor {key!r} in {folder / ADAPTER_WEIGHTS}")
    loaded = set()
    for hf_module, ab in by_module.items():
        target = mapper.to_loris(hf_module + ".weight")
        short = hf_module.rsplit(".", 1)[-1]
        a, b = ab["lora_A"], ab["lora_B"]
        scaling = _scaling_for(peft_cfg, short, a.shape[0])
        if isinstance(target, Split):
            sizes = target.sizes(model.config)
            parts = [t.removesuffix(".weight") for t in target.targets]
            for name, b_part in zip(parts, torch.split(b, sizes, dim=0), strict=True):
                _assign(loras, name, a, b_part, scaling, folder)
                loaded.add(name)
        elif isinstance(target, str):
            name = target.removesuffix(".weight")
            _assign(loras, name, a, b, scaling, folder)
            loaded.add(name)
        else:
            raise ValueError(
                f"adapter module {hf_module!r} does not exist in this {model.config.model_type} model"
            )
    missing = (set(loras) - loaded) | ({n for n, _ in expert_lora_modules(model)} - loaded_experts)
    if missing:
        raise ValueError(f"{folder}: the adapter has no weights for {sorted(missing)[:4]} ...")


def _load_expert_tensors(model, mapper: NameMapper, tensors: dict, peft_cfg: dict, folder: Path) -> set[str]:
    """Take the expert adapters (``target_parameters``) out of ``tensors`` into the model's
    `ExpertLora` slots; returns the slots filled."""
    params = peft_cfg.get("target_parameters") or []
    slots = {slot for slot, p in _EXPERT_PARAMS.items() if any(t.endswith(p) for t in params)}
    if not slots:
        return set()
    experts = {n.rpartition(".")[0] for n, _ in expert_lora_modules(model)}
    done: set[str] = set()
    for parent in sorted(experts):
        hf_module = mapper.to_hf(parent + ".gate_up_proj").removesuffix(".gate_up_proj")
        for slot, prefix in _expert_keys(hf_module, slots).items():
            a, b = tensors.pop(prefix + "lora_A.weight", None), tensors.pop(prefix + "lora_B.weight", None)
            if a is None or b is None:
                raise ValueError(f"{folder}: no {_EXPERT_PARAMS[slot]} adapter for {hf_module}")
            mod = model.get_submodule(f"{parent}.{slot}")
            e = mod.lora_A.shape[0]
            r = a.shape[0] // e
            if r != mod.r:  # e.g. PEFT's fused gate/up adapter of rank 2r
                device = mod.lora_A.device
                mod.lora_A = torch.nn.Parameter(torch.empty(e, r, a.shape[1], device=device))
                mod.lora_B = torch.nn.Parameter(torch.empty(e, b.shape[0], r, device=device))
                mod.r = r
            with torch.no_grad():
                mod.lora_A.copy_(a.reshape(e, r, -1))
                mod.lora_B.copy_(b.reshape(b.shape[0], r, e).permute(2, 0, 1))
            mod.scaling = _scaling_for(peft_cfg, _EXPERT_PARAMS[slot], r)
            done.add(f"{parent}.{slot}")
    return done


def _assign(loras: dict[str, LoraLinear], name: str, a, b, scaling: float, folder: Path) -> None:
    mod = loras.get(name)
    if mod is None:
        raise ValueError(f"{folder}: adapter weights for {name}, which the adapter config does not target")
    # Keep each module's own rank: a fused adapter gives every part the shared A (rank r_total).
    if mod.lora_A.shape != a.shape:
        mod.lora_A = torch.nn.Parameter(torch.empty_like(a, dtype=torch.float32, device=mod.lora_A.device))
        mod.lora_B = torch.nn.Parameter(
            torch.empty(b.shape, dtype=torch.float32, device=mod.lora_B.device), requires_grad=True
        )
        mod.r = a.shape[0]
    with torch.no_grad():
        mod.lora_A.copy_(a)
        mod.lora_B.copy_(b)
    mod.scaling = scaling
