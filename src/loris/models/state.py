"""What loris knows about a loaded model beyond its weights, declared in one place.

The face (`FastLanguageModel`), the trainers, generation and export all need a few facts about a
model: where it came from (merged exports reuse the original files), its sequence length, its
tokenizer, its adapter settings. They live in one typed `ModelState` on the model
(``model.state``), set by the face and read through `model_state`, never as loose attributes read
back with ``getattr(model, name, default)``: DDP hides a wrapped module's attributes (FSDP2 and
``torch.compile`` keep or hide them in their own ways), and `unwrap_model` reaches through each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from loris.lora import LoraConfig

DEFAULT_MAX_SEQ_LENGTH = 2048


@dataclass
class ModelState:
    """The loaded model's declared facts; a field left at its default means "not known"."""

    name_or_path: str | None = None
    """What the user passed to ``from_pretrained`` (a Hub id or a path); names adapters and cards."""
    source_folder: Path | None = None
    """The folder holding the original files (config.json, weights, tokenizer)."""
    source_gguf_file: Path | None = None
    """The .gguf file the model was loaded from, when it was (its tokenizer lives in it)."""
    max_seq_length: int | None = None
    """The sequence length asked for at load time (`FastLanguageModel` fills in its default)."""
    tokenizer: Any = None
    peft_config: LoraConfig | None = None
    """The adapter settings once `get_peft_model` has run (None: no adapters)."""
    checkpointing: bool | str = False
    """The activation-checkpointing mode asked for: False, True (recompute), "offload" or "auto"."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The loris model under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    FSDP2's ``fully_shard`` keeps the module itself (it swaps the class for a subclass), so the model
    comes back as it is."""
    while True:
        inner = model.__dict__.get("_modules", {}).get("module")
        if inner is not None and _is_data_parallel(model):
            model = inner
            continue
        orig = model.__dict__.get("_modules", {}).get("_orig_mod")
        if orig is not None:
            model = orig
            continue
        return model


def _is_data_parallel(model: nn.Module) -> bool:
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return isinstance(model, (DistributedDataParallel, DataParallel))


def model_state(model: nn.Module) -> ModelState:
    """The `ModelState` of ``model`` (wrappers unwrapped). A module that is not a loris model (a
    plain ``nn.Module`` handed to the trainer loop) has none: it gets an empty one, detached."""
    state = unwrap_model(model).__dict__.get("state")
    return state if isinstance(state, ModelState) else ModelState()
