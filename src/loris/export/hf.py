"""Merged Hugging Face checkpoints: LoRA folded into the weights, written as sharded safetensors.

``save_merged`` writes what ``AutoModelForCausalLM.from_pretrained`` loads: config.json (the
original HF config, quantization_config removed or, for ``merged_4bit_forced``, a bitsandbytes one),
generation_config.json, ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``
and the tokenizer. Tensors are computed shard by shard from a plan (`loris.export.merged_tensors`),
so peak extra memory is about one shard; the folder is staged beside the target and renamed in.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from loris.export.atomic import publish_dir, staging_dir
from loris.export.merged_tensors import PlannedTensor, lm_head_is_tied, merged_plan_for_export
from loris.models.state import model_state

logger = logging.getLogger(__name__)

SAVE_METHODS = (
    "merged_16bit",
    "merged_32bit",
    "merged_4bit_forced",
    "forced_merged_4bit",
    "lora",
    "merged_4bit",
)
_SIXTEEN_BIT = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_STALE = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """``"5GB"`` → 5·10⁹ bytes (``"5GiB"`` → 5·2³⁰), as transformers reads ``max_shard_size``."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B)\s*", str(size).upper())
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not a size like '5GB', '500MB' or an int of bytes")
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def save_merged(
    model,
    save_directory: str | Path,
    tokenizer: Any = None,
    save_method: str = "merged_16bit",
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``model`` with its LoRA merged (or just the adapter for ``save_method="lora"``).

    ``merged_16bit``: 16-bit weights whatever dtype the model computes in (an fp32 CPU model too):
    the source checkpoint's dtype when it was float16 or bfloat16, else bfloat16 (a float32, 4-bit
    or GGUF source); ``dtype`` (float16 or bfloat16) overrides the choice. ``merged_32bit``: float32
    weights, only when asked for by name. The merge itself is computed in float32 either way; a
    4-bit/8-bit base is merged into its original weights when the checkpoint it came from is on this
    machine, else into the dequantized weights (the printed line says which, and the dtype written).
    ``merged_4bit_forced``: the merged weights re-quantized to NF4 (bitsandbytes layout, double
    quantized) with a matching quantization_config; its other tensors are 16-bit as above.
    """
    method = str(save_method).lower()
    if method not in SAVE_METHODS:
        raise ValueError(f"save_method={save_method!r} is not one of {', '.join(SAVE_METHODS)}")
    out = Path(save_directory)
    if method == "merged_4bit":
        raise ValueError(
            "save_method='merged_4bit' would merge the LoRA update into 4-bit weights, which rounds most of "
            "the update away and loses accuracy. Use save_method='merged_16bit' (recommended: merges into "
            "16-bit weights), or 'merged_4bit_forced' if you really want a 4-bit (NF4) checkpoint."
        )
    if method == "lora":
        from loris.peft_format import save_adapter

        path = save_adapter(model, out)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return path
    four_bit = method in ("merged_4bit_forced", "forced_merged_4bit")
    out_dtype = merged_dtype(model, method, dtype)
    # -- free-space check before writing (loris.export.diskspace) --
    from loris.export.diskspace import ensure_free_space, estimate_bytes

    ensure_free_space(out, estimate_bytes(model, [method], out_dtype), f"the {method} export to {out}")
    plan, source = merged_plan_for_export(model)
    written = "NF4 projections (bitsandbytes), other tensors " if four_bit else ""
    message = f"loris: merging LoRA into {source}; writing {written}{_dtype_name(out_dtype)} safetensors"
    logger.info(message)
    print(message)
    budget = parse_size(max_shard_size)
    entries = [_Entry(t, out_dtype, four_bit) for t in plan]
    with staging_dir(out) as tmp:
        _write_shards(entries, tmp, budget)
        config = export_config(model, out_dtype, quantization=_bnb_config(out_dtype) if four_bit else None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _write_generation_config(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        publish_dir(tmp, out, stale=_STALE)
    return out


def merged_dtype(model, save_method: str = "merged_16bit", dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype a merged export writes (see `save_merged`): float32 only for ``merged_32bit``."""
    if save_method == "merged_32bit":
        if dtype not in (None, torch.float32):
            raise ValueError(f"save_method='merged_32bit' writes float32, not {dtype}; drop dtype=")
        return torch.float32
    if dtype is not None:
        if dtype not in _SIXTEEN_BIT.values():
            raise ValueError(
                f"{save_method} writes 16-bit weights, not {dtype}: pass dtype=torch.bfloat16 or "
                "torch.float16, or save_method='merged_32bit' for float32"
            )
        return dtype
    hf = getattr(model.config, "hf_config", None) or {}
    source = str(hf.get("dtype") or hf.get("torch_dtype") or "").removeprefix("torch.")
    return _SIXTEEN_BIT.get(source, torch.bfloat16)


# ---------------------------------------------------------------------------------- tensors → shards


class _Entry:
    """One planned tensor as it is written: plain, or NF4 (weight + its quant-state tensors)."""

    def __init__(self, planned: PlannedTensor, dtype: torch.dtype, four_bit: bool):
        self.planned = planned
        self.dtype = dtype
        self.quantize = four_bit and planned.is_projection and planned.name.endswith(".weight")

    @property
    def nbytes(self) -> int:
        n = self.planned.numel()
        if self.quantize:  # packed nibbles + one absmax byte per 64 values (the rest is tiny)
            return n // 2 + n // 64
        return n * torch.empty((), dtype=self.dtype).element_size()

    def tensors(self) -> dict[str, torch.Tensor]:
        w = self.planned.compute()
        if not self.quantize:
            t = w.to(self.dtype)
            if t.untyped_storage().nbytes() != t.numel() * t.element_size():  # a view of packed q/k/v
                t = t.clone()
            return {self.planned.name: t.contiguous()}
        from loris.quant import Linear4bit

        q = Linear4bit.from_float(w.to(self.dtype))
        prefix = self.planned.name.removesuffix("weight")
        return {k: v.detach().cpu().contiguous() for k, v in q.bnb_state_dict(prefix).items()}


def _shards(entries: list[_Entry], budget: int) -> list[list[_Entry]]:
    shards: list[list[_Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > budget:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def _write_shards(entries: list[_Entry], folder: Path, budget: int) -> None:
    from safetensors.torch import save_file

    shards = _shards(entries, budget)
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        fname = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for e in shard:
            tensors.update(e.tensors())
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
        del tensors
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------- configs


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _bnb_config(compute_dtype: torch.dtype) -> dict[str, Any]:
    return {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": _dtype_name(compute_dtype),
        "bnb_4bit_quant_storage": "uint8",
        "llm_int8_skip_modules": None,
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_enable_fp32_cpu_offload": False,
    }


def export_config(model, dtype: torch.dtype, quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's original HF config, with its dtype, tying and quantization made true of the export."""
    cfg = dict(model.config.hf_config)
    cfg.pop("quantization_config", None)
    cfg["dtype"] = _dtype_name(dtype)
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = _dtype_name(dtype)
    if model.config.tie_word_embeddings and not lm_head_is_tied(model):
        cfg["tie_word_embeddings"] = False  # lm_head was trained on its own (modules_to_save)
    if quantization is not None:
        cfg["quantization_config"] = quantization
    return cfg


def _write_generation_config(model, folder: Path) -> None:
    source = model_state(model).source_folder
    src = Path(source) / "generation_config.json" if source else None
    if src is not None and src.exists():
        shutil.copyfile(src, folder / "generation_config.json")
        return
    cfg = model.config
    gen = {
        k: v
        for k, v in (
            ("bos_token_id", cfg.bos_token_id),
            ("eos_token_id", cfg.eos_token_id),
            ("pad_token_id", cfg.pad_token_id),
        )
        if v is not None
    }
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def iter_written_tensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a folder written by `save_merged` (for checks and tests)."""
    from loris.models.loading import iter_checkpoint

    yield from iter_checkpoint(Path(folder))
