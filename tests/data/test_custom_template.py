"""apply_chat_template with Unsloth's {INPUT}/{OUTPUT} form: renders must equal the literal substitution."""

from __future__ import annotations

import datasets
import pytest

from loris.chat_templates import CustomChatTemplate, apply_chat_template, get_chat_template
from loris.data.custom_template import DEFAULT_INSTRUCTION_TEMPLATE, custom_template_of


def conv(*pairs, system=None):
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for user, assistant in pairs:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"conversations": msgs}


def fill(template: str, *pairs, system=None, eos="</s>") -> str:
    """The oracle: the user's own text with the placeholders substituted (EOS after each answer)."""
    out = template if system is None else template.replace("{SYSTEM}", system)
    for user, assistant in pairs:
        out = out.replace("{INPUT}", user, 1).replace("{OUTPUT}", assistant + eos, 1)
    return out


CHATML_LIKE = (
    "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{INPUT}<|im_end|>\n"
    "<|im_start|>assistant\n{OUTPUT}<|im_end|>\n"
)
TWO_TURNS = "### Q: {INPUT}\n### A: {OUTPUT}\n---\n### Q: {INPUT}\n### A: {OUTPUT}\n"


@pytest.mark.parametrize("as_dataset", [False, True])
def test_single_turn_equals_the_template_text(build_tokenizer, as_dataset):
    rows = [conv(("What is 2+2?", "4")), conv(("Hi", "Hello there"))]
    data = datasets.Dataset.from_list(rows) if as_dataset else rows
    tok = build_tokenizer()
    out = apply_chat_template(data, tok)
    assert [r["text"] for r in out] == [
        fill(DEFAULT_INSTRUCTION_TEMPLATE, ("What is 2+2?", "4")),
        fill(DEFAULT_INSTRUCTION_TEMPLATE, ("Hi", "Hello there")),
    ]
    gen = tok.apply_chat_template(
        [{"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True
    )
    assert gen == DEFAULT_INSTRUCTION_TEMPLATE.split("{OUTPUT}")[0].replace("{INPUT}", "Q")


def test_two_example_turns_fix_what_goes_between_turns(build_tokenizer):
    tok = build_tokenizer()
    out = apply_chat_template([conv(("a", "b"), ("c", "d"))], tok, chat_template=TWO_TURNS)
    assert out[0]["text"] == fill(TWO_TURNS, ("a", "b"), ("c", "d"))
    three = apply_chat_template([conv(("a", "b"), ("c", "d"), ("e", "f"))], tok, chat_template=TWO_TURNS)
    assert three[0]["text"] == fill(TWO_TURNS, ("a", "b"), ("c", "d")) + "---\n### Q: e\n### A: f</s>\n"


def test_one_turn_form_reuses_the_templates_separator(build_tokenizer):
    tok = build_tokenizer()
    out = apply_chat_template([conv(("a", "b"), ("c", "d"))], tok)
    first = fill(DEFAULT_INSTRUCTION_TEMPLATE, ("a", "b"))
    assert out[0]["text"] == first + "\n\n### Instruction:\nc\n\n### Response:\nd</s>"


def test_system_slot(build_tokenizer):
    tok = build_tokenizer(eos="<|im_end|>")
    rows = [conv(("q", "a")), conv(("q", "a"), system="Be terse.")]
    out = apply_chat_template(rows, tok, chat_template=CHATML_LIKE, default_system_message="You help.")
    # EOS is <|im_end|>, already in the template's suffix: not written twice.
    assert out[0]["text"] == fill(CHATML_LIKE, ("q", "a"), system="You help.", eos="")
    assert out[1]["text"] == fill(CHATML_LIKE, ("q", "a"), system="Be terse.", eos="")
    no_default = apply_chat_template(rows[:1], tok, chat_template=CHATML_LIKE)
    assert no_default[0]["text"] == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"


def test_pieces_prefix_infix_suffix_and_round_trip(build_tokenizer):
    parsed = CustomChatTemplate.parse(CHATML_LIKE, "You help.", eos_token="<|im_end|>")
    assert parsed.prefix == "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert parsed.infix == "<|im_end|>\n<|im_start|>assistant\n"
    assert parsed.suffix == "<|im_end|>\n"
    assert (parsed.system_prefix, parsed.system_suffix) == ("<|im_start|>system\n", "<|im_end|>\n")
    assert parsed.instruction == parsed.instruction_next == "<|im_start|>user\n"
    assert parsed.eos_in_suffix
    assert CustomChatTemplate.from_jinja(parsed.to_jinja()) == parsed
    tok = build_tokenizer()
    apply_chat_template([conv(("q", "a"))], tok, chat_template=TWO_TURNS, extra_eos_tokens=["</s>"])
    assert custom_template_of(tok) == CustomChatTemplate.parse(TWO_TURNS, extra_eos_tokens=["</s>"])
    assert custom_template_of(get_chat_template(build_tokenizer(), "chatml")) is None


def test_tricky_text_survives(build_tokenizer):
    template = "Q {{x}} '\"#} \\n: {INPUT}\nA: {OUTPUT}"
    tok = build_tokenizer()
    out = apply_chat_template([conv(("{%raw%}", "é😀"))], tok, chat_template=template)
    assert out[0]["text"] == fill(template, ("{%raw%}", "é😀"))


def test_extra_eos_tokens(build_tokenizer):
    tok = build_tokenizer()
    size = len(tok)
    with pytest.warns(UserWarning, match="resize"):
        apply_chat_template([conv(("q", "a"))], tok, extra_eos_tokens=["<|im_end|>", "<|stop|>"])
    assert len(tok) == size + 1 and "<|stop|>" in tok.get_vocab()


def test_errors(build_tokenizer):
    tok = build_tokenizer()
    for bad, match in [
        ("{INPUT} only", "needs {INPUT}"),
        ("{OUTPUT} then {INPUT}", "after {INPUT}"),
        ("{INPUT} {OUTPUT} {SYSTEM}", "before the first"),
        ("{INPUT}{INPUT}{OUTPUT}", "once each"),
        ("Q {INPUT} A {OUTPUT} Q {INPUT} B {OUTPUT}", "differ"),
    ]:
        with pytest.raises(ValueError, match=match):
            apply_chat_template([conv(("q", "a"))], tok, chat_template=bad)
    with pytest.raises(ValueError, match="needs a {SYSTEM}"):
        apply_chat_template([conv(("q", "a"))], tok, default_system_message="x")
    with pytest.raises(Exception, match="no {SYSTEM} slot"):
        apply_chat_template([conv(("q", "a"), system="s")], tok)
    with pytest.raises(ValueError, match="standardize_sharegpt"):
        apply_chat_template([{"conversations": [{"from": "human", "value": "q"}]}], tok)
    with pytest.raises(ValueError, match="to_sharegpt"):
        apply_chat_template([{"instruction": "q"}], tok)


def test_none_keeps_the_tokenizers_template(build_tokenizer):
    tok = get_chat_template(build_tokenizer(), "chatml")
    out = apply_chat_template([conv(("q", "a"))], tok, chat_template=None)
    assert out[0]["text"] == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
