"""loris: fast, lean fine-tuning of open LLMs (LoRA, QLoRA, full, GRPO) with export to every runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names are resolved lazily so `import loris` stays cheap and free of side effects.
_LAZY = {
    "FastLanguageModel": "loris.face",
    "FastModel": "loris.face",
    "is_bfloat16_supported": "loris.face",
    "SFTConfig": "loris.trainers.sft",
    "SFTTrainer": "loris.trainers.sft",
    "UnslothTrainer": "loris.trainers.sft",
    "UnslothTrainingArguments": "loris.trainers.sft",
    "GRPOConfig": "loris.trainers.grpo",
    "GRPOTrainer": "loris.trainers.grpo",
    "SamplingParams": "loris.generation.params",
    "DPOConfig": "loris.trainers.dpo",
    "DPOTrainer": "loris.trainers.dpo",
    "PatchDPOTrainer": "loris.trainers.dpo",
    "ORPOConfig": "loris.trainers.orpo",
    "ORPOTrainer": "loris.trainers.orpo",
    "CPOConfig": "loris.trainers.cpo",
    "CPOTrainer": "loris.trainers.cpo",
    "KTOConfig": "loris.trainers.kto",
    "KTOTrainer": "loris.trainers.kto",
}

if TYPE_CHECKING:  # pragma: no cover
    from loris.face import FastLanguageModel, FastModel, is_bfloat16_supported  # noqa: F401
    from loris.generation.params import SamplingParams  # noqa: F401
    from loris.trainers.cpo import CPOConfig, CPOTrainer  # noqa: F401
    from loris.trainers.dpo import DPOConfig, DPOTrainer, PatchDPOTrainer  # noqa: F401
    from loris.trainers.grpo import GRPOConfig, GRPOTrainer  # noqa: F401
    from loris.trainers.kto import KTOConfig, KTOTrainer  # noqa: F401
    from loris.trainers.orpo import ORPOConfig, ORPOTrainer  # noqa: F401
    from loris.trainers.sft import (  # noqa: F401
        SFTConfig,
        SFTTrainer,
        UnslothTrainer,
        UnslothTrainingArguments,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loris' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["__version__", *_LAZY]
