"""loris' own calls into torch, transformers and friends use no deprecated API.

A deprecation reaches users in two ways: a ``DeprecationWarning`` / ``FutureWarning`` attributed to
the calling line (made an error here for lines in loris), and transformers' logger
(``warning_once``: "`torch_dtype` is deprecated! Use `dtype` instead!"). ``warning_once`` remembers
what it said for the whole process, so its memory is cleared first, or the test could not fail once
any earlier test had triggered the message.
"""

from __future__ import annotations

import logging
import warnings

import torch

from loris import FastLanguageModel, SFTConfig, SFTTrainer
from tiny_models import save_bpe_llama


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_load_train_save_and_reload_use_no_deprecated_api(tmp_path):
    from transformers.utils import logging as hf_logging

    from loris.export.gguf import save_gguf

    base = save_bpe_llama(tmp_path / "base", "chatml")
    hf_logging.warning_once.cache_clear()
    records = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(records)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("error", category=category, module=r"loris(\.|$)")
            model, tok = FastLanguageModel.from_pretrained(str(base), dtype=torch.float32, load_in_4bit=False)
            model = FastLanguageModel.get_peft_model(
                model, r=4, lora_alpha=8, use_gradient_checkpointing=True
            )
            rows = [{"text": "hello world, the quick brown fox"}] * 4
            args = SFTConfig(
                output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to="none"
            )
            SFTTrainer(model=model, processing_class=tok, train_dataset=rows, args=args).train()
            model.save_pretrained(tmp_path / "adapter", tok)
            model.save_pretrained_merged(tmp_path / "merged", tok, save_method="merged_16bit")
            (gguf,) = save_gguf(model, tmp_path / "gguf", tok, quantization_method=["q8_0"])
            FastLanguageModel.from_pretrained(
                str(tmp_path / "adapter"), dtype=torch.float32, load_in_4bit=False
            )
            FastLanguageModel.from_pretrained(str(tmp_path / "merged"), load_in_4bit=True)
            FastLanguageModel.from_pretrained(str(gguf), dtype=torch.float32, load_in_4bit=False)
    finally:
        hf_logger.removeHandler(records)
    deprecated = [m for m in records.messages if "deprecat" in m.lower()]
    assert not deprecated, deprecated
