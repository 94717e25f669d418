"""Shared test setup: marker handling (gpu / slow) and small helpers."""

from __future__ import annotations

import os

import pytest
import torch

# Triton decides between compiling and interpreting when it is first imported (bitsandbytes and our
# kernel modules import it), so on a machine without CUDA the interpreter is chosen here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def saved_family(tmp_path_factory):
    """family → (transformers model, folder it was saved to), built once per session."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            from tiny_models import make_hf_model, save_tiny

            model = make_hf_model(family)
            folder = tmp_path_factory.mktemp(family)
            save_tiny(model, folder)
            cache[family] = (model, folder)
        return cache[family]

    return get
