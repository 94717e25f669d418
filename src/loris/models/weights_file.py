"""Reading one .safetensors file, with an error that names the file when it is cut short.

safetensors reports a truncated file as "incomplete metadata, file not fully covered" without a
path; a model folder has many files, and the fix (download or export it again) depends on knowing
which one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch


class CorruptCheckpointError(ValueError):
    """A weights file that cannot be read as what its name says (truncated, damaged)."""


def iter_safetensors(path: Path, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one .safetensors file; a file cut short or damaged raises
    `CorruptCheckpointError` naming it (safetensors' own message names no file)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (a file the checkpoint names is missing)")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as sf:
            keys = list(sf.keys())
            for key in keys:
                yield key, sf.get_tensor(key)
    except SafetensorError as e:
        raise CorruptCheckpointError(
            f"{path} is truncated or corrupt ({path.stat().st_size:,} bytes; safetensors says: {e}). "
            "It was probably cut short by an interrupted download or copy: download it again (delete "
            "it from the Hugging Face cache first if it came from the Hub), or re-export the model."
        ) from e


def load_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of one .safetensors file (see `iter_safetensors` for the errors)."""
    return dict(iter_safetensors(Path(path), device))
