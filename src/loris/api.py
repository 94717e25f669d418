"""Former home of `FastLanguageModel`; it lives in `loris.face` now (kept so old imports work)."""

from loris.face.loader import FastLanguageModel, FastModel, finetune_targets, is_bfloat16_supported

__all__ = ["FastLanguageModel", "FastModel", "finetune_targets", "is_bfloat16_supported"]
