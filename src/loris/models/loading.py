"""Checkpoint → `LorisForCausalLM`: local folders, Hub ids, GGUF files; 16-bit, NF4 or int8 linears.

The model is built on the meta device and each tensor is read, cast (and quantized) on its own,
so loading never holds two copies of the weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loris.models.bundled import bundled_file, bundled_hub_id
from loris.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from loris.models.decoder import LorisForCausalLM
from loris.models.families import IGNORED_HF_KEYS, NameMapper, Stacked
from loris.models.packing import pack_projections
from loris.models.weights_file import CorruptCheckpointError, iter_safetensors
from loris.quant import Linear4bit, quantized_linear

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_BNB_STATE_SUFFIXES = (
    "absmax",
    "quant_map",
    "nested_absmax",
    "nested_quant_map",
    "quant_state.bitsandbytes__nf4",
)


class ModelNotFoundError(FileNotFoundError):
    pass


__all__ = ["CorruptCheckpointError", "ModelNotFoundError", "OfflineError", "load_model", "resolve_source"]


class OfflineError(ConnectionError):
    pass


@dataclass
class ResolvedSource:
    """Where the files are: a folder with config.json, or a single GGUF file."""

    folder: Path
    gguf_file: Path | None = None
    hub_id: str | None = None  # a bundled model's Hub id: the name to record instead of its path


def resolve_source(
    name_or_path: str | Path, *, token: str | None = None, revision: str | None = None
) -> ResolvedSource:
    """Local folder, local .gguf file, or a Hub repo id: from the HF cache, else a bundled model's
    file (`loris.models.bundled`), else downloaded to the HF cache."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedSource(path.parent, path, hub_id=bundled_hub_id(path))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists() and ggufs:
            if len(ggufs) > 1:
                raise ValueError(
                    f"{path} holds several GGUF files ({', '.join(g.name for g in ggufs)}); pass one file."
                )
            return ResolvedSource(path, ggufs[0])
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelNotFoundError(
                f"{path} has no config.json (nor adapter_config.json or a .gguf file): "
                "point to a Hugging Face model folder, a PEFT adapter folder or a .gguf file."
            )
        return ResolvedSource(path)
    name = str(name_or_path)
    if path.exists() or not _HUB_ID.match(name):
        raise ModelNotFoundError(
            f"model path {name!r} does not exist. Pass an existing local folder (with config.json), "
            "a .gguf file, or a Hugging Face Hub id like 'org/model'."
        )
    cached = _from_cache(name, token=token, revision=revision)
    if cached is not None:  # the cache first: works offline and costs no request
        return ResolvedSource(cached)
    bundled = bundled_file(name) if revision is None else None
    if bundled is not None:
        return ResolvedSource(bundled.parent, bundled, hub_id=name)
    return ResolvedSource(_download(name, token=token, revision=revision))


_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def _from_cache(repo_id: str, *, token: str | None, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, token=token, allow_patterns=_PATTERNS, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


def _download(repo_id: str, *, token: str | None, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    patterns = _PATTERNS
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=patterns))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} was not found or is gated ({type(e).__name__}). Check the id, or pass token=... "
            "for a private or gated model."
        ) from e
    except Exception as e:  # connection refused, DNS failure, HF_HUB_OFFLINE, ...
        raise OfflineError(
            f"could not download {repo_id!r} from the Hugging Face Hub: this machine looks offline "
            f"({type(e).__name__}: {e}). Copy the model to a local folder and pass its path instead, "
            "e.g. FastLanguageModel.from_pretrained('/path/to/model')."
        ) from e


# ---------------------------------------------------------------------------------- tensor sources


def _checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = sorted(folder.glob("*.safetensors"))
    if single:
        return single
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise ModelNotFoundError(f"{folder} has config.json but no *.safetensors or pytorch_model*.bin weights.")


def iter_checkpoint(folder: Path, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs, one tensor in memory at a time (safetensors) or memory-mapped (.bin)."""
    for f in _checkpoint_files(folder):
        if f.suffix == ".safetensors":
            yield from iter_safetensors(f, device)
        else:
            state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
            for key, tensor in state.items():
                yield key, tensor.to(device)
            del state


# ---------------------------------------------------------------------------------- building


@dataclass
class LoadOptions:
    dtype: torch.dtype
    device: torch.device
    quantization: str | None = None  # None | "nf4" | "int8"


def _linear_slot(model: nn.Module, loris_weight_name: str) -> tuple[nn.Module, str] | None:
    """(parent module, attribute) of the projection owning a ``*.weight`` name, or None if not a projection."""
    if not loris_weight_name.startswith("layers.") or not loris_weight_name.endswith("_proj.weight"):
        return None
    module_path = loris_weight_name.removesuffix(".weight")
    parent_path, _, attr = module_path.rpartition(".")
    return model.get_submodule(parent_path), attr


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    parent_path, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if isinstance(old, nn.Parameter):
        if tuple(old.shape) != tuple(value.shape):
            raise ValueError(
                f"checkpoint tensor {name} has shape {tuple(value.shape)}, expected {tuple(old.shape)}"
            )
        setattr(parent, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        parent.register_buffer(attr, value)


def build_model(
    cfg: ModelConfig,
    tensors: Iterator[tuple[str, torch.Tensor]],
    opts: LoadOptions,
    *,
    bnb_prequantized: bool = False,
    model_class: type[LorisForCausalLM] = LorisForCausalLM,
) -> LorisForCausalLM:
    """Materialise a meta-device model from HF-named tensors; every parameter comes out frozen.

    ``model_class`` is the plain decoder unless a caller (the face) asks for its subclass."""
    with torch.device("meta"):
        model = model_class(cfg)
    mapper = NameMapper(cfg)
    pending_bnb: dict[str, dict[str, torch.Tensor]] = {}
    loaded: set[str] = set()
    filled: dict[str, int] = {}  # stacked expert weight → expert slices placed so far

    def place(name: str, tensor: torch.Tensor) -> None:
        slot = _linear_slot(model, name)
        if slot is None:
            _set_tensor(model, name, tensor.to(opts.device, opts.dtype))
        else:
            weight = tensor.to(opts.device, opts.dtype)
            if opts.quantization is None:
                new = _plain_linear(weight)
            else:
                new = quantized_linear(weight, None, opts.quantization)
            _swap_projection(*slot, new)
        loaded.add(name)

    for hf_name, tensor in tensors:
        if IGNORED_HF_KEYS.search(hf_name):
            continue
        if bnb_prequantized:
            base, kind = _bnb_component(hf_name)
            if kind is not None or base in pending_bnb:
                parts = pending_bnb.setdefault(base, {})
                parts[kind or "weight"] = tensor
                if _bnb_complete(parts):
                    del pending_bnb[base]
                    _place_bnb(model, mapper, base, parts, opts, place, loaded)
                continue
            if tensor.dtype == torch.uint8 and hf_name.endswith("_proj.weight"):
                pending_bnb[hf_name] = {"weight": tensor}
                continue
        target = mapper.to_loris(hf_name)
        if isinstance(target, Stacked):
            place_expert(model, target, tensor.to(opts.device, opts.dtype))
            loaded.add(target.target)
            filled[target.target] = filled.get(target.target, 0) + 1
            if filled[target.target] == _expert_slices(model, target.target):
                _quantize_experts(model, target.target, opts)
            continue
        for name, value in mapper.convert(hf_name, tensor):
            place(name, value)
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                _quantize_experts(model, name, opts)

    if pending_bnb:
        raise ValueError(
            f"incomplete 4-bit tensors in the checkpoint for: {', '.join(sorted(pending_bnb))[:300]}"
        )
    if "lm_head.weight" not in loaded:
        if not cfg.tie_word_embeddings:
            raise ValueError("the checkpoint has no lm_head.weight and the config does not tie embeddings.")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        raise ValueError(f"the checkpoint is missing {len(missing)} tensors, e.g. {missing[:5]}")
    for p in model.parameters():
        p.requires_grad_(False)
    pack_projections(model)  # q/k/v and gate/up weights share one buffer each (16-bit bases)
    return model


def place_expert(model: nn.Module, target: Stacked, tensor: torch.Tensor) -> None:
    """Copy one expert's projection into its slice of the stacked weight (allocated on first use)."""
    param = model.get_parameter(target.target)
    if param.is_meta:
        _set_tensor(model, target.target, torch.empty(param.shape, dtype=tensor.dtype, device=tensor.device))
        param = model.get_parameter(target.target)
    rows = tensor.shape[0]
    start = 0 if target.part is None else target.part * rows
    if tuple(param[target.expert, start : start + rows].shape) != tuple(tensor.shape):
        raise ValueError(
            f"expert tensor for {target.target}[{target.expert}] has shape {tuple(tensor.shape)}, "
            f"expected {tuple(param[target.expert, start : start + rows].shape)}"
        )
    with torch.no_grad():
        param[target.expert, start : start + rows].copy_(tensor)


def _expert_slices(model: nn.Module, name: str) -> int:
    """How many per-expert tensors fill stacked weight ``name`` (gate and up fill half each)."""
    experts = model.get_submodule(name.rpartition(".")[0])
    return experts.num_experts * (2 if name.endswith("gate_up_proj") else 1)


def _quantize_experts(model: nn.Module, name: str, opts: LoadOptions) -> None:
    """Quantize a completed stacked expert weight at once, so the 16-bit experts of the whole model
    are never in memory together."""
    if opts.quantization is None:
        return
    parent, _, attr = name.rpartition(".")
    model.get_submodule(parent).quantize(attr, opts.quantization)


def _plain_linear(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


def _swap_projection(parent: nn.Module, attr: str, new: nn.Module) -> None:
    """Put `new` in a projection slot, keeping the bias the slot already has (loaded or still meta)."""
    new.bias = getattr(parent, attr).bias
    setattr(parent, attr, new)


def _bnb_component(hf_name: str) -> tuple[str, str | None]:
    """Split a bitsandbytes 4-bit checkpoint key into (weight name, quant-state component)."""
    for suffix in _BNB_STATE_SUFFIXES:
        if hf_name.endswith(".weight." + suffix):
            return hf_name[: -len(suffix) - 1], suffix
    return hf_name, None


def _bnb_complete(parts: dict[str, torch.Tensor]) -> bool:
    needed = {"weight", "absmax", "quant_map", "quant_state.bitsandbytes__nf4"}
    if not needed <= parts.keys():
        return False
    from bitsandbytes.utils import unpack_tensor_to_dict

    meta = unpack_tensor_to_dict(parts["quant_state.bitsandbytes__nf4"])
    if "nested_offset" in meta:
        return {"nested_absmax", "nested_quant_map"} <= parts.keys()
    return True


def _place_bnb(
    model, mapper: NameMapper, base: str, parts: dict, opts: LoadOptions, place, loaded: set
) -> None:
    """Place a pre-quantized 4-bit projection as it is; a fused one (Phi-3) is split and re-quantized."""
    state = {k: v for k, v in parts.items() if k != "weight"}
    lin = Linear4bit.from_bnb_tensors(parts["weight"], state, None, opts.device)
    target = mapper.to_loris(base)
    if isinstance(target, str):
        slot = _linear_slot(model, target)
        if slot is None:
            raise ValueError(f"4-bit tensor {base} does not map to a projection")
        _swap_projection(*slot, lin)
        loaded.add(target)
        return
    for name, value in mapper.convert(base, lin.dequantize(opts.dtype)):
        place(name, value)


# ---------------------------------------------------------------------------------- entry point


def pick_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """None → bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU; an impossible choice is an error."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use torch.bfloat16, torch.float16 or torch.float32")
        dtype = getattr(torch, name)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)
        if dtype is None:
            return torch.bfloat16 if bf16_ok else torch.float16
        if dtype == torch.bfloat16 and not bf16_ok:
            raise ValueError(
                f"{torch.cuda.get_device_name(device)} has no bfloat16 support; pass dtype=torch.float16 (or None)."
            )
        return dtype
    if dtype is None:
        return torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"dtype {dtype} is not a floating-point weight type; use bfloat16, float16 or float32."
        )
    return dtype


def pick_device(device_map) -> torch.device:
    if device_map in (None, "auto", "sequential", "balanced"):
        from loris.distributed.env import local_device

        return local_device()  # under torchrun/accelerate: this rank's GPU (cuda:LOCAL_RANK)
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(
                "loris places a model on one device; use torch.distributed (torchrun) for several GPUs."
            )
        device_map = devices.pop()
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    device = torch.device(device_map)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device_map={device_map!r} asks for CUDA but no GPU is visible; pass device_map='cpu'."
        )
    return device


def load_model(
    source: ResolvedSource,
    *,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None,
    max_seq_length: int | None = None,
    model_class: type[LorisForCausalLM] = LorisForCausalLM,
    trust_remote_code: bool = False,
    token: str | None = None,
    generic_class: type | None = None,
) -> LorisForCausalLM:
    """Build the model for a resolved source (as ``model_class``, the plain decoder by default); a
    model type with no loris family goes through transformers (`loris.models.generic`), wrapped as
    ``generic_class`` (`GenericCausalLM` by default)."""
    opts = LoadOptions(dtype=dtype, device=device, quantization=quantization)
    if source.gguf_file is not None:
        from loris.models.gguf_import import GGUFCheckpoint

        ckpt = GGUFCheckpoint(source.gguf_file)
        cfg = ModelConfig.from_hf(ckpt.hf_config)
        return build_model(cfg, ckpt.tensors(dtype), opts, model_class=model_class)
    raw = json.loads((source.folder / "config.json").read_text())
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        from loris.models.generic import load_generic

        return load_generic(
            source.folder,
            raw,
            dtype=dtype,
            device=device,
            quantization=quantization,
            trust_remote_code=trust_remote_code,
            token=token,
            model_class=generic_class,
        )
    qcfg = raw.pop("quantization_config", None)
    cfg = ModelConfig.from_hf(raw)
    prequantized = False
    tensors = iter_checkpoint(source.folder, device)
    if qcfg is not None and qcfg.get("quant_method") == "mxfp4":  # gpt-oss' experts: dequantized here
        from loris.models.mxfp4 import dequantize_mxfp4_tensors

        tensors, qcfg = dequantize_mxfp4_tensors(tensors, dtype), None
    if qcfg is not None:
        method = qcfg.get("quant_method")
        if method != "bitsandbytes":
            raise ValueError(
                f"checkpoints quantized with {method!r} are not supported; use a 16-bit, bitsandbytes "
                "or MXFP4 (gpt-oss) one."
            )
        if qcfg.get("load_in_4bit"):
            if qcfg.get("bnb_4bit_quant_type", "fp4") != "nf4":
                raise ValueError(
                    "only NF4 bitsandbytes checkpoints are supported (bnb_4bit_quant_type='nf4')."
                )
            prequantized = True
            opts.quantization = opts.quantization or "nf4"
        elif qcfg.get("load_in_8bit"):
            raise ValueError(
                "pre-quantized 8-bit checkpoints are not supported; load the 16-bit model with load_in_8bit=True."
            )
    return build_model(
        cfg,
        tensors,
        opts,
        bnb_prequantized=prequantized,
        model_class=model_class,
    )


def load_saved(
    folder: str | Path, *, dtype: torch.dtype, device: torch.device, token: str | None = None
) -> LorisForCausalLM:
    """A saved folder as a plain model, for checks that compare it with another: a checkpoint as it
    is, or a PEFT adapter folder on its base model, LoRA live (no face, nothing trainable)."""
    from loris.lora import inject_lora
    from loris.peft_format import load_adapter_weights, lora_config_from_peft, read_adapter_config

    source = resolve_source(folder, token=token)
    if source.gguf_file is not None or not (source.folder / "adapter_config.json").exists():
        return load_model(source, dtype=dtype, device=device, quantization=None)
    peft_cfg = read_adapter_config(source.folder)
    base = peft_cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{folder}/adapter_config.json names no base_model_name_or_path; set it to the base model"
        )
    model = load_model(resolve_source(base, token=token), dtype=dtype, device=device, quantization=None)
    lora = lora_config_from_peft(peft_cfg)
    inject_lora(model, lora)
    model.state.peft_config = lora
    load_adapter_weights(model, source.folder, peft_cfg)
    return model.eval()
