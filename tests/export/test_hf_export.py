"""Merged safetensors exports load back into transformers (an independent reader) and into loris."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import nf4_oracle
from loris import FastLanguageModel
from loris.lora import lora_modules
from tiny_models import VOCAB

TEMPLATE = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"


def _load(folder, **kw):
    kw.setdefault("load_in_4bit", False)
    model, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, device_map="cpu", **kw)
    return model, tok


def _with_lora(model, seed=1):
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(seed)
    for _, m in lora_modules(model):
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    return model.eval()


def _ids(seed=0):
    return torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids=None):
    with torch.no_grad():
        return model(_ids() if ids is None else ids).logits


def _hf_logits(folder, **kw):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager", **kw)
    return _logits(hf.eval())


def _hf_4bit_logits(folder):
    """transformers reads the 4-bit checkpoint with its bitsandbytes loader; its NF4 weights are then
    decoded by the test's own oracle, not bitsandbytes' host-dependent CPU kernels (nf4_oracle)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", device_map="cpu"
    )
    return _logits(nf4_oracle.decode_4bit_linears(hf).eval())


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def _written_dtypes(folder) -> dict[str, torch.dtype]:
    """The dtype of every tensor in every safetensors file of ``folder``."""
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                out[k] = sf.get_slice(k).get_dtype()
    assert out, f"no tensors in {folder}"
    return {
        k: getattr(torch, {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(v, v))
        for k, v in out.items()
    }


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3", "phi3", "llama3.2"])
def test_merged_32bit_loads_in_transformers_and_loris(family, saved_family, tmp_path):
    """float32 (asked for by name): the merge itself is exact, read back by transformers and loris."""
    _, folder = saved_family(family)
    model, tok = _load(folder)
    model = _with_lora(model)
    tok.chat_template = TEMPLATE
    ref = _logits(model)
    out = model.save_pretrained_merged(tmp_path / "merged", tok, save_method="merged_32bit")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    assert set(_written_dtypes(out).values()) == {torch.float32}
    assert (out / "generation_config.json").exists()
    assert (_hf_logits(out) - ref).abs().max().item() <= 1e-4
    reloaded, rtok = _load(out)
    assert (_logits(reloaded) - ref).abs().max().item() <= 1e-4
    assert rtok.chat_template == TEMPLATE
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging leftovers


def test_merged_16bit_streams_shard_by_shard(saved_family, tmp_path, monkeypatch):
    import safetensors.torch

    from loris.export import hf as hf_export

    _, folder = saved_family("llama")
    model = _with_lora(_load(folder)[0])
    events: list[tuple[str, int]] = []
    real_tensors, real_save = hf_export._Entry.tensors, safetensors.torch.save_file

    def spy_tensors(self):
        out = real_tensors(self)
        events.append(("compute", sum(t.numel() * t.element_size() for t in out.values())))
        return out

    def spy_save(tensors, path, metadata=None):
        events.append(("save", sum(t.numel() * t.element_size() for t in tensors.values())))
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(hf_export._Entry, "tensors", spy_tensors)
    monkeypatch.setattr(safetensors.torch, "save_file", spy_save)
    budget = 30_000
    out = hf_export.save_merged(model, tmp_path / "m", save_method="merged_32bit", max_shard_size=budget)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 5 and all((out / s).exists() for s in shards)
    largest = max(size for kind, size in events if kind == "compute")
    pending = 0  # bytes computed but not yet written: never more than one shard
    for kind, size in events:
        pending = pending + size if kind == "compute" else pending - size
        assert pending <= max(budget, largest)
    assert pending == 0
    assert (_hf_logits(out) - _logits(model)).abs().max().item() <= 1e-4


def test_4bit_base_merges_into_original_16bit_weights(saved_family, tmp_path, capsys):
    _, folder = saved_family("qwen3")
    q4 = _with_lora(_load(folder, load_in_4bit=True)[0])
    full = _with_lora(_load(folder)[0])
    with torch.no_grad():  # the same adapter on the 16-bit base: the reference for the merge
        for (_, a), (_, b) in zip(lora_modules(full), lora_modules(q4), strict=True):
            a.lora_A.copy_(b.lora_A)
            a.lora_B.copy_(b.lora_B)
    out = q4.save_pretrained_merged(tmp_path / "merged", save_method="merged_32bit")
    assert "original unquantized weights" in capsys.readouterr().out
    assert (_hf_logits(out) - _logits(full)).abs().max().item() <= 1e-4
    assert _rel(_logits(full), _logits(q4)) > 1e-3  # the 4-bit model itself differs: the test can fail


def test_4bit_base_without_originals_merges_into_dequantized(saved_family, tmp_path, capsys):
    _, folder = saved_family("llama")
    q4 = _with_lora(_load(folder, load_in_4bit=True)[0])
    q4.source_folder = None
    q4.name_or_path = str(tmp_path / "gone")
    out = q4.save_pretrained_merged(tmp_path / "merged", save_method="merged_32bit")
    assert "dequantized" in capsys.readouterr().out
    assert (_hf_logits(out) - _logits(q4)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3", "phi3"])
def test_merged_4bit_forced_is_a_bitsandbytes_checkpoint(family, saved_family, tmp_path):
    _, folder = saved_family(family)
    model, tok = _load(folder)
    model = _with_lora(model)
    ref = _logits(model)
    out = model.save_pretrained_merged(tmp_path / "q4", tok, save_method="merged_4bit_forced")
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["load_in_4bit"] and qcfg["bnb_4bit_quant_type"] == "nf4" and qcfg["bnb_4bit_use_double_quant"]
    sixteen = model.save_pretrained_merged(tmp_path / "f", tok, save_method="merged_16bit")
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))  # noqa: E731
    assert size(out) < 0.6 * size(sixteen)
    hf4 = _hf_4bit_logits(out)
    ours, _ = _load(out, load_in_4bit=True)
    assert 1e-4 < _rel(hf4, ref) < 0.5  # quantized, not a 16-bit copy
    if family == "phi3":  # loris splits the fused 4-bit projections and re-quantizes each part
        assert _rel(_logits(ours), hf4) < 0.15
        return
    assert (_logits(ours) - hf4).abs().max().item() <= 1e-4  # same NF4 bytes in both readers
    # and they are the merged weights quantized: the same as NF4-loading the 16-bit merge
    nf4_of_merge, _ = _load(sixteen, load_in_4bit=True)
    assert (_logits(nf4_of_merge) - hf4).abs().max().item() <= 1e-4


def test_forced_alias_and_merged_4bit_refusal(saved_family, tmp_path):
    _, folder = saved_family("llama")
    model = _with_lora(_load(folder)[0])
    with pytest.raises(ValueError, match="merged_4bit_forced.*|merged_16bit"):
        model.save_pretrained_merged(tmp_path / "x", save_method="merged_4bit")
    assert not (tmp_path / "x").exists()
    out = model.save_pretrained_merged(tmp_path / "y", save_method="forced_merged_4bit")
    assert "quantization_config" in json.loads((out / "config.json").read_text())
    with pytest.raises(ValueError, match="save_method"):
        model.save_pretrained_merged(tmp_path / "z", save_method="merged_8bit")


def test_lora_method_writes_the_peft_adapter(saved_family, tmp_path):
    _, folder = saved_family("llama")
    model, tok = _load(folder)
    model = _with_lora(model)
    out = model.save_pretrained_merged(tmp_path / "a", tok, save_method="lora")
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    reloaded, _ = _load(out)
    assert (_logits(reloaded) - _logits(model)).abs().max().item() <= 1e-4


def test_overwrite_replaces_stale_shards(saved_family, tmp_path):
    _, folder = saved_family("llama")
    model = _with_lora(_load(folder)[0])
    out = tmp_path / "m"
    model.save_pretrained_merged(out, save_method="merged_32bit", max_shard_size="30KB")
    (out / "notes.txt").write_text("mine")
    model.save_pretrained_merged(out, save_method="merged_32bit")  # one shard now
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists() and (out / "notes.txt").exists()
    assert (_hf_logits(out) - _logits(model)).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "source, written",
    [
        (torch.float32, torch.bfloat16),  # an fp32 source: bf16
        (torch.float16, torch.float16),  # a 16-bit source keeps its own dtype
        (torch.bfloat16, torch.bfloat16),
    ],
    ids=["fp32-source", "fp16-source", "bf16-source"],
)
def test_merged_16bit_writes_16bit_whatever_the_model_computes_in(
    source, written, saved_family, tmp_path, capsys
):
    """merged_16bit from a model computing in fp32 (the CPU default) writes 16-bit tensors, every one
    of them, and says so; float32 only for merged_32bit."""
    from tiny_models import tiny_tokenizer

    hf, _ = saved_family("llama")
    folder = tmp_path / "src"
    copy.deepcopy(hf).to(source).save_pretrained(folder)  # the session's shared model stays fp32
    tiny_tokenizer().save_pretrained(folder)
    model, tok = _load(folder)
    assert model.dtype == torch.float32
    model = _with_lora(model)
    name = str(written).removeprefix("torch.")
    out = model.save_pretrained_merged(tmp_path / "m16", tok, save_method="merged_16bit")
    dtypes = _written_dtypes(out)
    assert set(dtypes.values()) == {written}, dtypes
    assert json.loads((out / "config.json").read_text())["dtype"] == name
    assert f"writing {name} safetensors" in capsys.readouterr().out
    size16 = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    out32 = model.save_pretrained_merged(tmp_path / "m32", tok, save_method="merged_32bit")
    assert set(_written_dtypes(out32).values()) == {torch.float32}
    assert "writing float32 safetensors" in capsys.readouterr().out
    assert size16 < 0.55 * sum(p.stat().st_size for p in out32.glob("*.safetensors"))
    assert _rel(_hf_logits(out), _hf_logits(out32)) < 2e-2  # the same merge, rounded to 16 bits


def test_merged_16bit_of_a_4bit_base_and_dtype_choices(saved_family, tmp_path, capsys):
    from loris.export.hf import merged_dtype

    _, folder = saved_family("qwen3")  # an fp32 checkpoint: its weights are not 16-bit, so bf16
    q4 = _with_lora(_load(folder, load_in_4bit=True)[0])
    out = q4.save_pretrained_merged(tmp_path / "m", save_method="merged_16bit")
    assert set(_written_dtypes(out).values()) == {torch.bfloat16}
    assert "writing bfloat16 safetensors" in capsys.readouterr().out
    assert merged_dtype(q4, "merged_16bit", torch.float16) == torch.float16
    with pytest.raises(ValueError, match="merged_32bit"):
        merged_dtype(q4, "merged_16bit", torch.float32)
    q4.config.hf_config["dtype"] = "float16"  # as a bitsandbytes checkpoint of an fp16 model records
    assert merged_dtype(q4, "merged_16bit") == torch.float16
    assert merged_dtype(q4, "merged_32bit") == torch.float32
