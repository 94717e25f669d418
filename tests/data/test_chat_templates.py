"""get_chat_template: renders checked against the families' own published renders and Ollama's."""

from __future__ import annotations

import json
import os
import warnings
from importlib import resources
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError

from loris.data.chat_templates import get_chat_template, spec_for_tokenizer, split_prologue, wrap_template
from loris.data.registry import TEMPLATES, resolve_template, template_names

REFERENCE = Path(
    os.environ.get("LORIS_REFERENCE_DIR", Path(__file__).resolve().parents[1] / "fixtures" / "reference")
)
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data {REFERENCE} is absent")
# the published templates of the reference data's families (gpt-oss: tests/data/test_gpt_oss_template.py)
PUBLISHED = [
    name
    for name, spec in TEMPLATES.items()
    if spec.published and (REFERENCE / "chat_templates" / spec.file.split("/")[-1]).exists()
]
CHATS = ["single", "system", "multi", "system_multi"]
SHAREGPT = {"role": "from", "content": "value", "user": "human", "assistant": "gpt"}


def _reference_meta() -> dict:
    return json.loads((REFERENCE / "chat_templates" / "templates.json").read_text())["templates"]


def _family_of(spec_name: str) -> dict:
    """The templates.json entry whose file the registry entry ships."""
    file = TEMPLATES[spec_name].file.split("/")[-1]
    return next(v for v in _reference_meta().values() if v["file"] == file)


def _family_tokenizer(build_tokenizer, spec_name: str):
    meta = _family_of(spec_name)
    return build_tokenizer(bos=meta["bos_token"] or "<s>", eos=meta["eos_token"])


def _render(tok, messages, **kw):
    kw.setdefault("add_generation_prompt", True)
    return tok.apply_chat_template(messages, tokenize=False, date_string="26 Jul 2024", **kw)


def _hf_expected(renders: dict, family: str, chat: str) -> str | None:
    return next(r["hf_text"] for r in renders["results"] if r["hf"] == family and r["chat"] == chat)


@pytest.mark.parametrize("name", PUBLISHED)
def test_shipped_template_is_the_published_file(name):
    shipped = TEMPLATES[name].template.encode("utf-8")
    reference = (REFERENCE / "chat_templates" / TEMPLATES[name].file.split("/")[-1]).read_bytes()
    assert shipped == reference


def test_every_shipped_file_has_a_source():
    folder = resources.files("loris.data").joinpath("templates")
    sources = json.loads(folder.joinpath("sources.json").read_text())
    for spec in TEMPLATES.values():
        group, file = spec.file.split("/")
        assert file in sources[group], spec.file
    for file in sources["published"]:
        assert folder.joinpath("published").joinpath(file).is_file()


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_template_renders_like_the_family(build_tokenizer, renders, name, chat):
    family = _family_of(name)["name"]
    tok = get_chat_template(_family_tokenizer(build_tokenizer, name), name)
    expected = _hf_expected(renders, family, chat)
    if expected is None:  # the family's own template refuses this chat (gemma2 + system)
        with pytest.raises(TemplateError):
            _render(tok, renders["chats"][chat])
        return
    assert _render(tok, renders["chats"][chat]) == expected


@pytest.mark.parametrize("chat", CHATS)
def test_chatml_renders_like_ollama_chatml(build_tokenizer, renders, chat):
    tok = get_chat_template(build_tokenizer(), "chatml")
    expected = next(
        r["ollama_text"] for r in renders["results"] if r["ollama"] == "built-in chatml" and r["chat"] == chat
    )
    assert _render(tok, renders["chats"][chat]) == expected


# Ollama's template_test.go chats; testdata/<template>/<case> holds its expected renders.
_OLLAMA_MSGS = {
    "system": {"role": "system", "content": "You are a helpful assistant."},
    "user1": {"role": "user", "content": "Hello, how are you?"},
    "assistant": {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    "user2": {"role": "user", "content": "I'd like to show off how chat templating works!"},
}
_OLLAMA_CASES = {
    "user": ["user1"],
    "user-assistant-user": ["user1", "assistant", "user2"],
    "system-user-assistant-user": ["system", "user1", "assistant", "user2"],
}


def _ollama_case(template: str, case: str) -> tuple[list[dict], str]:
    path = REFERENCE / "ollama" / "testdata" / f"{template}.gotmpl" / case
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return [_OLLAMA_MSGS[k] for k in _OLLAMA_CASES[case]], path.read_text()


@pytest.mark.parametrize("case", list(_OLLAMA_CASES))
@pytest.mark.parametrize(("name", "ollama_name"), [("alpaca", "alpaca"), ("vicuna", "vicuna")])
def test_instruction_formats_render_like_ollama(build_tokenizer, name, ollama_name, case):
    messages, expected = _ollama_case(ollama_name, case)
    # Ollama has no default system prompt and writes no EOS for alpaca: switch ours off to compare.
    tok = get_chat_template(build_tokenizer(), name, system_message="")
    eos = {"eos_token": ""} if name == "alpaca" else {}
    assert _render(tok, messages, **eos) == expected


@pytest.mark.parametrize("case", ["user", "user-assistant-user"])
def test_gemma_renders_like_ollama_gemma(build_tokenizer, case):
    messages, expected = _ollama_case("gemma-instruct", case)
    tok = get_chat_template(build_tokenizer(bos="<bos>", eos="<eos>"), "gemma")
    assert _render(tok, messages) == "<bos>" + expected  # Ollama leaves BOS to the tokenizer


def test_default_system_prompts(build_tokenizer):
    tok = get_chat_template(build_tokenizer(), "unsloth")
    text = _render(tok, [_OLLAMA_MSGS["user1"], _OLLAMA_MSGS["assistant"]], add_generation_prompt=False)
    assert text == (
        "You are a helpful assistant to the user\n>>> User: Hello, how are you?\n"
        ">>> Assistant: I'm doing great. How can I help you today?</s>\n"
    )
    tok = get_chat_template(build_tokenizer(), "vicuna")
    assert _render(tok, [_OLLAMA_MSGS["user1"]]).startswith(
        TEMPLATES["vicuna"].default_system_message + "\n\nUSER: Hello"
    )


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_sharegpt_mapping_renders_like_role_content(build_tokenizer, renders, name):
    chat = renders["chats"]["multi"]
    sharegpt = [
        {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in chat
    ]
    plain = get_chat_template(build_tokenizer(), name)
    mapped = get_chat_template(build_tokenizer(), name, mapping=SHAREGPT)
    assert mapped.chat_template != plain.chat_template
    assert _render(mapped, sharegpt) == _render(plain, chat)
    assert _render(mapped, chat) == _render(plain, chat)  # plain role/content still renders


@pytest.mark.parametrize("name", ["qwen-2.5", "smollm2", "chatml", "llama-3.1", "alpaca"])
def test_system_message_is_the_default_system_prompt(build_tokenizer, renders, name):
    chat = renders["chats"]["single"]
    mine = 'You are Loris. Quote: "#}" {{ not jinja }}\n\u00e9\U0001f600'
    tok = get_chat_template(build_tokenizer(), name, system_message=mine)
    plain = get_chat_template(build_tokenizer(), name)
    assert _render(tok, chat) == _render(plain, [{"role": "system", "content": mine}] + chat)
    assert mine in _render(tok, chat)
    given = renders["chats"]["system"]  # a conversation's own system message still wins
    assert _render(tok, given) == _render(plain, given)


def test_system_message_rejected_where_the_family_has_no_system_role(build_tokenizer):
    with pytest.raises(ValueError, match="gemma-3"):
        get_chat_template(build_tokenizer(), "gemma2", system_message="be brief")


def test_prologue_round_trip(build_tokenizer):
    base = TEMPLATES["phi-4"].template
    wrapped = wrap_template(base, SHAREGPT, system_message="x #} y")
    settings, inner = split_prologue(wrapped)
    assert inner == base and settings.system_message == "x #} y" and settings.mapping.role == "from"
    assert split_prologue(wrap_template(wrapped, None, None)) == (None, base)  # rewrapping replaces
    tok = get_chat_template(build_tokenizer(), "phi-4", mapping=SHAREGPT)
    assert spec_for_tokenizer(tok).name == "phi-4"


def test_names_and_aliases(build_tokenizer):
    for alias, name in [("llama3", "llama-3"), ("llama-31", "llama-3.1"), ("qwen25", "qwen-2.5"),
                        ("qwen2.5", "qwen-2.5"), ("qwen-25", "qwen-2.5"), ("qwen3", "qwen-3"),
                        ("gemma3", "gemma-3"), ("phi-35", "phi-3.5"), ("Llama-3.2", "llama-3.2")]:  # fmt: skip
        assert resolve_template(alias).name == name
    with pytest.raises(ValueError, match="Unknown chat template 'llama-9'.*chatml.*zephyr"):
        get_chat_template(build_tokenizer(), "llama-9")
    assert {"chatml", "llama-3", "mistral", "gemma", "alpaca", "vicuna", "unsloth"} <= set(template_names())


def test_tuple_template_and_bad_types(build_tokenizer):
    tok = get_chat_template(
        build_tokenizer(), ("{% for m in messages %}{{ m['content'] }}<|end|>{% endfor %}", "<|end|>")
    )
    assert tok.eos_token == "<|end|>"
    assert _render(tok, [{"role": "user", "content": "hi"}]) == "hi<|end|>"
    with pytest.raises(ValueError, match="tuple"):
        get_chat_template(build_tokenizer(), ("only template",))
    with pytest.raises(TypeError):
        get_chat_template(build_tokenizer(), 3)


def test_map_eos_reuses_an_existing_token(build_tokenizer):
    tok = build_tokenizer(eos="</s>")
    size = len(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_chat_template(tok, "chatml")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert len(tok) == size


def test_map_eos_adds_a_missing_token_with_a_warning(build_tokenizer):
    tok = build_tokenizer(specials=[])
    size = len(tok)
    with pytest.warns(UserWarning, match="resize"):
        get_chat_template(tok, "llama-3")
    assert tok.eos_token == "<|eot_id|>" and len(tok) == size + 1
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|eot_id|>"


def test_no_map_warns_when_the_stop_token_is_not_a_token(build_tokenizer):
    tok = build_tokenizer(specials=[])
    with pytest.warns(UserWarning, match="map_eos_token=True"):
        get_chat_template(tok, "gemma-3", map_eos_token=False)
    assert tok.eos_token == "</s>"


def test_templates_that_write_eos_token_keep_the_tokenizers_eos(build_tokenizer):
    tok = get_chat_template(build_tokenizer(eos="</s>"), "zephyr")
    assert tok.eos_token == "</s>"


def test_smollm2_real_tokenizer(smol_tokenizer, renders):
    tok = smol_tokenizer
    size = len(tok)
    assert tok.eos_token == "<|im_start|>"  # what the GGUF metadata says; the template stops on <|im_end|>
    get_chat_template(tok, "smollm2")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and len(tok) == size
    for chat in CHATS:
        assert _render(tok, renders["chats"][chat]) == _hf_expected(renders, "chatml", chat)
