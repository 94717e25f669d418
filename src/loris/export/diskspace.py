"""Free-space check before an export writes anything, so a full disk fails in a second, not mid-file.

Sizes are estimated from the model's weight count (4-bit/8-bit linears counted unpacked, LoRA factors
left out, tied weights once) times the bytes per weight of each requested format, plus a margin for
llama.cpp's K-quant mixes (some tensors get more bits) and for metadata.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

_MARGIN = 1.10  # K-quant mixes, tokenizer files, headers
_SLACK = 16 * 2**20  # configs and tokenizer files of a tiny model
_NF4_BYTES = 0.5 + 1 / 64 + 4 / 4096  # packed nibbles, absmax byte per 64, nested scales
_ADAPTER_FORMATS = ("lora",)


class NotEnoughDiskSpace(OSError):
    """Raised before writing when the target file system cannot hold the export."""


def weight_counts(model) -> tuple[int, int]:
    """(weights of quantizable linear projections, all other weights), as the export writes them."""
    from loris.quant import QuantizedLinear

    projection = other = 0
    quantized_prefixes: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            projection += module.in_features * module.out_features
            quantized_prefixes.append(name + ".")
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        if ".lora_A" in name or ".lora_B" in name or any(name.startswith(q) for q in quantized_prefixes):
            continue
        if name.endswith("proj.weight") or name.endswith("proj.base.weight"):
            projection += p.numel()
        else:
            other += p.numel()
    return projection, other


def bytes_per_weight(fmt: str, dtype: torch.dtype = torch.float16) -> float:
    """Bytes one weight takes in ``fmt``: a merged save method or a GGUF quantization method."""
    name = fmt.lower()
    if name in ("merged_16bit", "merged_32bit"):
        return float(torch.empty((), dtype=dtype).element_size())
    if name in _ADAPTER_FORMATS:
        return 0.0
    import gguf

    from loris.export.gguf_quants import default_type_for

    block, type_size = gguf.GGML_QUANT_SIZES[default_type_for(name)]
    return type_size / block


def estimate_bytes(model, formats: Sequence[str], dtype: torch.dtype | None = None) -> int:
    """Bytes needed to write every format in ``formats`` (merged save methods and/or GGUF methods)."""
    projection, other = weight_counts(model)
    dtype = dtype or getattr(model, "dtype", torch.float16)
    total = 0.0
    for fmt in formats:
        name = fmt.lower()
        if name in ("merged_4bit_forced", "forced_merged_4bit"):
            total += projection * _NF4_BYTES + other * torch.empty((), dtype=dtype).element_size()
        elif name in _ADAPTER_FORMATS:
            total += 0
        else:
            total += (projection + other) * bytes_per_weight(name, dtype)
    return int(total * _MARGIN) + _SLACK


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def ensure_free_space(target: str | Path, needed: int, what: str = "the export") -> None:
    """Stop with a clear message if the disk holding ``target`` has less than ``needed`` bytes free."""
    anchor = _existing(Path(target))
    free = shutil.disk_usage(anchor).free
    if free < needed:
        raise NotEnoughDiskSpace(
            errno.ENOSPC,
            f"Not enough disk space for {what}: it needs about {format_size(needed)} but only "
            f"{format_size(free)} is free on the disk holding {anchor}. Free some space or save to a "
            "folder on a bigger disk.",
        )
