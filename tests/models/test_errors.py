"""Bad input stops with a message that names the problem and the fix."""

from __future__ import annotations

import json

import pytest
import torch

from loris import FastLanguageModel
from loris.models.config import ModelConfig, UnsupportedModelError
from loris.models.loading import ModelNotFoundError, OfflineError, pick_device, pick_dtype


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        FastLanguageModel.from_pretrained(str(tmp_path / "nope"), load_in_4bit=False)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        FastLanguageModel.from_pretrained(str(tmp_path), load_in_4bit=False)


def test_hub_id_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OfflineError, match="offline.*local folder"):
        FastLanguageModel.from_pretrained("some-org/some-model", load_in_4bit=False, device_map="cpu")


def test_unsupported_architecture(tmp_path):
    # an encoder-decoder: neither a loris family nor a transformers causal LM (the generic path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(UnsupportedModelError, match="llama, mistral, qwen2, qwen3.*AutoModelForCausalLM"):
        FastLanguageModel.from_pretrained(str(tmp_path), load_in_4bit=False)
    with pytest.raises(UnsupportedModelError, match="bert"):
        ModelConfig.from_hf({"model_type": "bert"})


def test_4bit_and_8bit_together(saved_family):
    _, folder = saved_family("llama")
    with pytest.raises(ValueError, match="exclusive"):
        FastLanguageModel.from_pretrained(str(folder), load_in_4bit=True, load_in_8bit=True)


def test_dtype_the_device_cannot_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=False: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match="T4 has no bfloat16.*float16"):
        pick_dtype(torch.bfloat16, torch.device("cuda"))
    assert pick_dtype(None, torch.device("cuda")) == torch.float16
    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype("float17", torch.device("cpu"))
    with pytest.raises(ValueError, match="not a floating-point"):
        pick_dtype(torch.int8, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_requested_without_gpu():
    with pytest.raises(ValueError, match="no GPU is visible"):
        pick_device("cuda")


def test_unknown_keyword_is_rejected(saved_family):
    _, folder = saved_family("llama")
    with pytest.raises(TypeError, match="load_in_3bit"):
        FastLanguageModel.from_pretrained(str(folder), load_in_3bit=True)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_shard_names_the_file(saved_family, tmp_path, keep):
    """A .safetensors file cut short (an interrupted download) names itself and the fix, instead of
    safetensors' bare "incomplete metadata, file not fully covered"."""
    import shutil

    from loris.models.loading import CorruptCheckpointError

    _, folder = saved_family("llama")
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    (shard,) = sorted(copy.glob("*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data[: max(9, int(len(data) * keep))])
    with pytest.raises(CorruptCheckpointError) as err:
        FastLanguageModel.from_pretrained(str(copy), load_in_4bit=False)
    message = str(err.value)
    assert str(shard) in message
    assert "truncated or corrupt" in message and "download it again" in message and "re-export" in message
