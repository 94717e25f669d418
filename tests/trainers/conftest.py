"""Fixtures for tests/trainers: a fresh tiny llama (fp32, CPU, fully trainable) and its tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The test modules import their shared helpers (trainer_testing.py) from this directory.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny matmuls run ~100x faster on one thread when the CPU is shared (OpenMP barriers spin)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def load_tiny(saved_family):
    """Call to get a fresh ``(model, tokenizer)``: the same saved weights every time."""
    from loris import FastLanguageModel

    folder = saved_family("llama")[1]

    def load():
        return FastLanguageModel.from_pretrained(
            str(folder),
            load_in_4bit=False,
            dtype=torch.float32,
            device_map="cpu",
            full_finetuning=True,
        )

    return load


@pytest.fixture
def tokenizer(saved_family):
    from tiny_models import tiny_tokenizer

    return tiny_tokenizer()
