"""Ollama Modelfiles: the TEMPLATE, run by Go's text/template as Ollama runs it, must render exactly what
the Jinja chat template renders (BOS aside, which Ollama leaves to the tokenizer).

Needs the ``go`` toolchain (Debian: ``apt-get install golang-go``); skipped without it. The Go renderer
and Ollama's message handling (`loris.export.gotemplate`) are first checked against Ollama's own
expected renders of its built-in templates.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from loris.chat_templates import apply_chat_template, get_chat_template
from loris.data.registry import TEMPLATES
from loris.export import gotemplate
from loris.export.gotemplate import ollama_chat
from loris.export.ollama import modelfile_for

REFERENCE = Path(
    os.environ.get("LORIS_REFERENCE_DIR", Path(__file__).resolve().parents[1] / "fixtures" / "reference")
)
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data {REFERENCE} is absent")
SPECIALS = sorted(
    {t for spec in TEMPLATES.values() for t in spec.stop_tokens} | {"<s>", "</s>", "<bos>", "<eos>"}
)


def build_tokenizer(bos: str = "<s>", eos: str = "</s>"):
    """A tiny byte-level BPE tokenizer trained in memory (templates only need its special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(SPECIALS + [bos, eos]))
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["Hello, how are you? I am fine."], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)


@pytest.fixture(scope="module")
def go_render():
    """Render (TEMPLATE, Ollama's data for a chat) pairs with Go's own text/template (loris builds a
    small Go program for it, `loris.export.gotemplate.render_with_go`)."""
    if not gotemplate.go_available():
        pytest.skip("the go toolchain is absent (apt-get install golang-go)")
    return gotemplate.render_with_go


# Ollama's template_test.go chats; testdata/<name>.gotmpl/<case> holds its expected renders.
_MSG = {
    "system": {"role": "system", "content": "You are a helpful assistant."},
    "user1": {"role": "user", "content": "Hello, how are you?"},
    "assistant": {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    "user2": {"role": "user", "content": "I'd like to show off how chat templating works!"},
}
OLLAMA_CHATS = {
    "user": ["user1"],
    "user-assistant-user": ["user1", "assistant", "user2"],
    "system-user-assistant-user": ["system", "user1", "assistant", "user2"],
}


def test_harness_reproduces_ollamas_own_renders(go_render):
    meta = json.loads((REFERENCE / "ollama" / "ollama.json").read_text())["templates"]
    cases, expected = [], []
    for name, entry in meta.items():
        template = (REFERENCE / "ollama" / entry["file"]).read_text()
        if ".Messages" not in template:
            continue  # legacy .Prompt/.Response templates need Ollama's own turn splitting
        for case, keys in OLLAMA_CHATS.items():
            path = REFERENCE / "ollama" / "testdata" / entry["file"] / case
            if path.exists():
                cases.append((template, ollama_chat([_MSG[k] for k in keys])))
                expected.append((name, case, path.read_text()))
    assert len(cases) >= 30
    for got, (name, case, want) in zip(go_render(cases), expected, strict=True):
        # Ollama compares some templates after dropping one trailing space (template_test.go).
        assert got == want or got.rstrip(" ") == want.rstrip(" "), (name, case)


def _parse_modelfile(text: str) -> dict:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return {
        "from": re.search(r"^FROM (.+)$", text, re.M).group(1),
        "template": template.group(1) if template else None,
        "system": system.group(1) if system else None,
        "stops": re.findall(r'^PARAMETER stop "(.*)"$', text, re.M),
    }


def _chats(renders: dict, name: str) -> list[list[dict]]:
    chats = [renders["chats"][c] for c in ("single", "system", "multi", "system_multi")]
    chats += [[_MSG[k] for k in keys] for keys in OLLAMA_CHATS.values()]
    if not TEMPLATES[name].supports_system:
        chats = [c for c in chats if all(m["role"] != "system" for m in c)]
    return chats


@pytest.fixture(scope="module")
def renders() -> dict:
    return json.loads((REFERENCE / "ollama_vs_hf_renders.json").read_text())


def _tokenizer(name):
    spec = TEMPLATES[name]
    return build_tokenizer(bos=spec.bos_token or "<s>", eos=spec.eos_token or "</s>")


@pytest.mark.parametrize("name", sorted(n for n, spec in TEMPLATES.items() if spec.ollama))
def test_template_renders_like_the_jinja_template(go_render, renders, name):
    tok = get_chat_template(_tokenizer(name), name)
    modelfile = _parse_modelfile(modelfile_for(tok, "model.gguf"))
    assert modelfile["from"] == "model.gguf" and modelfile["template"]
    assert modelfile["system"] == TEMPLATES[name].default_system_message
    chats = _chats(renders, name)
    cases = [(modelfile["template"], ollama_chat(chat, modelfile["system"])) for chat in chats]
    for chat, got in zip(chats, go_render(cases), strict=True):
        want = tok.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, date_string="26 Jul 2024"
        )
        if TEMPLATES[name].adds_bos:
            assert want.startswith(tok.bos_token)
            want = want[len(tok.bos_token) :]
        assert got == want


@pytest.mark.parametrize("name", ["qwen-2.5", "gemma-3", "llama-3.1", "alpaca"])
def test_system_message_override_becomes_system(go_render, renders, name):
    tok = get_chat_template(_tokenizer(name), name, system_message="You are Loris.")
    modelfile = _parse_modelfile(modelfile_for(tok, "m.gguf"))
    assert modelfile["system"] == "You are Loris."
    chat = renders["chats"]["multi"]
    (got,) = go_render([(modelfile["template"], ollama_chat(chat, modelfile["system"]))])
    want = tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, date_string="26 Jul 2024"
    )
    assert got == want.removeprefix(tok.bos_token if TEMPLATES[name].adds_bos else "")


CUSTOM = [
    "Below are some instructions.\n\n### Instruction:\n{INPUT}\n\n### Response:\n{OUTPUT}",
    "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{INPUT}<|im_end|>\n<|im_start|>assistant\n{OUTPUT}<|im_end|>\n",
    "### Q: {INPUT}\n### A: {OUTPUT}\n---\n### Q: {INPUT}\n### A: {OUTPUT}\n",
    "{{literal}} {SYSTEM}\nUSER: {INPUT}\nBOT: {OUTPUT}",
]


@pytest.mark.parametrize("template", CUSTOM)
def test_custom_input_output_template(go_render, renders, template):
    tok = build_tokenizer()
    system = "Be kind." if "{SYSTEM}" in template else None
    rows = [{"conversations": renders["chats"]["multi"]}]
    apply_chat_template(
        rows, tok, chat_template=template, default_system_message=system, extra_eos_tokens=["</s>"]
    )
    modelfile = _parse_modelfile(modelfile_for(tok, "m.gguf"))
    assert modelfile["system"] == system and "</s>" in modelfile["stops"]
    chats = [renders["chats"][c] for c in ("single", "multi")]
    if system:
        chats += [renders["chats"][c] for c in ("system", "system_multi")]
    got = go_render([(modelfile["template"], ollama_chat(c, modelfile["system"])) for c in chats])
    want = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    assert got == want


def test_stops_and_parameters():
    text = modelfile_for("llama-3.1", "out/model.Q8_0.gguf", parameters={"temperature": 1.5, "min_p": 0.1})
    parsed = _parse_modelfile(text)
    assert parsed["from"] == "out/model.Q8_0.gguf"
    assert parsed["stops"][0] == "<|eot_id|>" and "<|start_header_id|>" in parsed["stops"]
    assert "PARAMETER temperature 1.5\nPARAMETER min_p 0.1\n" in text
    assert _parse_modelfile(modelfile_for("chatml", "m.gguf"))["stops"] == ["<|im_end|>", "<|im_start|>"]


def test_unknown_template_gives_a_modelfile_without_template():
    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.warns(UserWarning, match="no TEMPLATE"):
        text = modelfile_for(tok, "m.gguf")
    parsed = _parse_modelfile(text)
    assert parsed["template"] is None and parsed["stops"] == ["</s>"]
    with pytest.raises(ValueError, match="Unknown chat template"):
        modelfile_for("nope", "m.gguf")
