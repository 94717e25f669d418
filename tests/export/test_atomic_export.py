"""An export stopped midway (error, Ctrl-C, full disk) leaves no file that looks complete."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from loris import FastLanguageModel
from loris.export import gguf_quants
from loris.export.diskspace import NotEnoughDiskSpace
from loris.export.gguf import save_gguf  # tokenizer=None: no vocabulary needed here


@pytest.fixture(scope="module")
def model(saved_family):
    _, folder = saved_family("llama")
    m, _ = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    return FastLanguageModel.get_peft_model(m, r=4, lora_alpha=8, use_gradient_checkpointing=False).eval()


def _fail_on_third_tensor(monkeypatch, exc: BaseException) -> list:
    """Make the quantizer raise when the 3rd distinct tensor comes (after two were written)."""
    real, seen = gguf_quants.quantize, []

    def quantize(values, qtype, **kw):
        if not seen or seen[-1] is not values:
            seen.append(values)
        if len(seen) == 3:
            raise exc
        return real(values, qtype, **kw)

    monkeypatch.setattr(gguf_quants, "quantize", quantize)
    return seen


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_gguf_interrupted_midway_leaves_no_gguf(model, tmp_path, monkeypatch, exc):
    seen = _fail_on_third_tensor(monkeypatch, exc)
    with pytest.raises(type(exc)):
        save_gguf(model, tmp_path / "out", None, quantization_method=["q8_0", "f16"])
    assert len(seen) == 3  # it really stopped in the middle of the tensor data
    assert list((tmp_path / "out").glob("*.gguf")) == []
    assert list((tmp_path / "out").iterdir()) == []  # temp files removed too


def test_gguf_interrupted_keeps_the_previous_complete_file(model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    save_gguf(model, out, None, quantization_method="q8_0")
    before = (out / "model.Q8_0.gguf").read_bytes()
    with torch.no_grad():  # a different model, so an overwrite would show
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.5)
    _fail_on_third_tensor(monkeypatch, RuntimeError("disk gone"))
    with pytest.raises(RuntimeError, match="disk gone"):
        save_gguf(model, out, None, quantization_method="q8_0")
    assert (out / "model.Q8_0.gguf").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["model.Q8_0.gguf"]


def test_merged_interrupted_midway_leaves_nothing(model, tmp_path, monkeypatch):
    from loris.export import hf

    real, calls = hf._Entry.tensors, []

    def tensors(self):
        calls.append(self)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(hf._Entry, "tensors", tensors)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained_merged(tmp_path / "merged", None, max_shard_size="20KB")
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging folder


@pytest.mark.parametrize("what", ["gguf", "merged"])
def test_full_disk_is_refused_before_writing(model, tmp_path, monkeypatch, what):
    from loris.export import diskspace

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(
        diskspace.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 5 * 10**5, 5 * 10**5)
    )
    with pytest.raises(NotEnoughDiskSpace, match=r"needs about [\d.]+ MB but only 500\.0 KB is free") as err:
        if what == "gguf":
            save_gguf(model, tmp_path / "out", None, quantization_method="f16")
        else:
            model.save_pretrained_merged(tmp_path / "out", None)
    assert err.value.errno == 28
    assert list(tmp_path.iterdir()) == []
