"""`loris export`: artifacts from a saved adapter or model folder, bad input, Hub upload (fake Hub)."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
import torch

from loris import FastLanguageModel
from loris.cli import main
from loris.lora import lora_modules
from tiny_models import save_bpe_llama


def _bpe_llama(folder):
    return save_bpe_llama(folder, "chatml")


def _save_adapter(base_folder, out, seed=1):
    model, tok = FastLanguageModel.from_pretrained(str(base_folder), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(seed)
    for _, m in lora_modules(model):
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    model.save_pretrained(out, tok)
    return model.eval()


Saved = namedtuple("Saved", "base adapter model")


@pytest.fixture(scope="module")
def adapter(saved_family, tmp_path_factory):
    """A LoRA adapter over the tiny llama of the session fixture (WordLevel tokenizer: no GGUF vocab)."""
    _, base = saved_family("llama")
    out = tmp_path_factory.mktemp("cli") / "adapter"
    return Saved(base, out, _save_adapter(base, out))


@pytest.fixture(scope="module")
def bpe_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-bpe")
    base = _bpe_llama(root / "base")
    return Saved(base, root / "adapter", _save_adapter(base, root / "adapter"))


def _logits(model):
    ids = torch.randint(3, 150, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


def test_merged_16bit_from_an_adapter_folder(adapter, tmp_path, capsys):
    assert main(["export", str(adapter.adapter), "--out", str(tmp_path / "out"), "--merged-16bit"]) == 0
    merged = tmp_path / "out" / "merged_16bit"
    cfg = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert {"model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in merged.iterdir()
    }
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(merged / "model.safetensors")).values()} == {torch.bfloat16}
    reloaded, _ = FastLanguageModel.from_pretrained(str(merged), dtype=torch.float32, load_in_4bit=False)
    ref = _logits(adapter.model)
    assert ((_logits(reloaded) - ref).norm() / ref.norm()).item() < 2e-2  # the adapter was applied (bf16)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("merged_16bit:"))
    assert str(merged) in line and line.rstrip().endswith("KB)")


def test_gguf_and_merged_4bit_with_sizes(bpe_adapter, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export", str(bpe_adapter.adapter), "--out", str(out), "--merged-4bit", "--gguf", "Q8_0", "q4_0"]
    assert main(args) == 0
    ggufs = sorted(p.name for p in (out / "gguf").glob("*.gguf"))
    assert ggufs == ["adapter.Q4_0.gguf", "adapter.Q8_0.gguf"]
    modelfile = (out / "gguf" / "Modelfile").read_text()
    assert modelfile.startswith("FROM adapter.Q8_0.gguf") and "TEMPLATE" in modelfile
    cfg = json.loads((out / "merged_4bit_forced" / "config.json").read_text())
    assert cfg["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    printed = capsys.readouterr().out
    for name in ggufs:
        size = (out / "gguf" / name).stat().st_size
        line = next(x for x in printed.splitlines() if x.endswith(")") and name in x)
        assert line.startswith(f"gguf {name.split('.')[1].lower()}:") and f"{size / 1000:.1f} KB" in line
    assert any(x.startswith("merged_4bit_forced:") for x in printed.splitlines())
    assert not [p for p in out.rglob(".*")]  # no staging leftovers


def test_unknown_quant_method_lists_valid_ones(adapter, tmp_path):
    with pytest.raises(SystemExit, match=r"Unsupported GGUF quantization method 'q9_9'.*q4_k_m.*q8_0"):
        main(["export", str(adapter.adapter), "--out", str(tmp_path / "o"), "--gguf", "q4_k_m", "q9_9"])
    assert not (tmp_path / "o").exists()


def test_nothing_requested_or_missing_input(adapter, tmp_path):
    with pytest.raises(SystemExit, match="nothing to export"):
        main(["export", str(adapter.adapter), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--merged-16bit"])


def test_not_enough_disk_space_stops_before_writing(adapter, tmp_path, monkeypatch):
    from loris.export import diskspace

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(
        SystemExit, match=r"Not enough disk space.*needs about .* MB but only 1\.0 KB is free"
    ):
        main(
            ["export", str(adapter.adapter), "--out", str(tmp_path / "o"), "--merged-16bit", "--gguf", "f16"]
        )
    assert not (tmp_path / "o").exists()


def test_disk_estimate_tracks_format_sizes(adapter):
    from safetensors.torch import load_file

    from loris.export.diskspace import estimate_bytes, weight_counts

    projection, other = weight_counts(adapter.model)
    on_disk = load_file(str(adapter.base / "model.safetensors"))
    assert projection + other == sum(t.numel() for t in on_disk.values())  # LoRA factors not counted
    assert projection == sum(t.numel() for k, t in on_disk.items() if k.endswith("proj.weight"))
    f32 = estimate_bytes(adapter.model, ["merged_16bit"], torch.float32)
    f16 = estimate_bytes(adapter.model, ["f16"])
    q4 = estimate_bytes(adapter.model, ["q4_0"])
    both = estimate_bytes(adapter.model, ["f16", "q4_0"])
    assert f32 > f16 > q4 and both > f16
    weights = projection + other
    assert f32 >= 4 * weights and f16 >= 2 * weights and q4 >= weights * 18 / 32


def test_push_to_hub_from_the_cli(bpe_adapter, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from hub_server import FakeHub

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with FakeHub(token="hf_cli") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(SystemExit, match="No Hugging Face token"):
            main(["export", str(bpe_adapter.adapter), "--out", str(tmp_path / "o"), "--push-to-hub", "me/m"])
        assert hub.requests == [] and not (tmp_path / "o").exists()
        args = ["export", str(bpe_adapter.adapter), "--out", str(tmp_path / "o"), "--merged-16bit"]
        args += ["--gguf", "q8_0", "--push-to-hub", "me/m", "--token", "hf_cli", "--private"]
        assert main(args) == 0
    assert "model.safetensors" in hub.files("me/m") and "README.md" in hub.files("me/m")
    assert {"adapter.Q8_0.gguf", "Modelfile", "README.md"} <= set(hub.files("me/m-GGUF"))
    assert hub.files("me/m-GGUF")["adapter.Q8_0.gguf"] == (tmp_path / "o/gguf/adapter.Q8_0.gguf").read_bytes()
    assert hub.repos["me/m"].private is True
    assert {r.client for r in hub.requests} == {"127.0.0.1"}
    printed = capsys.readouterr().out
    assert "uploaded merged_16bit to me/m" in printed and "uploaded gguf to me/m-GGUF" in printed


def test_from_a_merged_folder(adapter, tmp_path):
    """A plain model folder (no adapter) exports too: the merged copy is the input in 16 bits, or
    exactly the (fp32) input with --merged-32bit."""
    src = adapter.base
    assert main(["export", str(src), "--out", str(tmp_path / "o"), "--merged-16bit", "--merged-32bit"]) == 0
    from safetensors.torch import load_file

    a = load_file(str(src / "model.safetensors"))
    b = load_file(str(tmp_path / "o" / "merged_16bit" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k].bfloat16(), b[k]) for k in a)
    c = load_file(str(tmp_path / "o" / "merged_32bit" / "model.safetensors"))
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
