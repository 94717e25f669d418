"""get_chat_template(tokenizer, "gpt-oss"): the harmony format, rendered by gpt-oss' published chat
template, against harmony renders written out from the format's documentation (OpenAI's harmony
guide: system message with identity, knowledge cutoff, current date, reasoning effort and the valid
channels; a developer message holding the instructions; final-channel assistant turns; the analysis
channel only for the trained last turn)."""

from __future__ import annotations

import datetime
import warnings

import pytest

from loris.data.chat_templates import get_chat_template
from loris.data.registry import resolve_template
from loris.export.ollama import modelfile_for

HARMONY_SPECIALS = ["<|startoftext|>", "<|start|>", "<|message|>", "<|channel|>", "<|end|>"]
HARMONY_SPECIALS += ["<|return|>", "<|call|>", "<|endoftext|>", "<|constrain|>"]


def harmony_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=HARMONY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["What is the weather like in SF? Always respond in riddles."], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def system(effort: str = "medium") -> str:
    today = datetime.date.today().strftime("%Y-%m-%d")
    return (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        f"Knowledge cutoff: 2024-06\nCurrent date: {today}\n\nReasoning: {effort}\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
    )


def developer(instructions: str) -> str:
    return f"<|start|>developer<|message|># Instructions\n\n{instructions}\n\n<|end|>"


@pytest.fixture
def tok():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # <|return|> is a token already: no warning, no new token
        return get_chat_template(harmony_tokenizer(), "gpt-oss")


def render(tok, messages, **kw):
    kw.setdefault("add_generation_prompt", True)
    return tok.apply_chat_template(messages, tokenize=False, **kw)


def test_prompt_with_developer_instructions_and_reasoning_effort(tok):
    """The harmony guide's example prompt (its date replaced by today's)."""
    messages = [
        {"role": "system", "content": "Always respond in riddles"},
        {"role": "user", "content": "What is the weather like in SF?"},
    ]
    want = (
        system("high")
        + developer("Always respond in riddles")
        + "<|start|>user<|message|>What is the weather like in SF?<|end|><|start|>assistant"
    )
    assert render(tok, messages, reasoning_effort="high") == want
    # a developer-role message is the same thing
    messages[0]["role"] = "developer"
    assert render(tok, messages, reasoning_effort="high") == want


def test_multi_turn_prompt_drops_earlier_reasoning(tok):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "thinking": "Greet back.", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    want = (
        system()
        + "<|start|>user<|message|>Hi<|end|>"
        + "<|start|>assistant<|channel|>final<|message|>Hello!<|end|>"
        + "<|start|>user<|message|>2+2?<|end|><|start|>assistant"
    )
    assert render(tok, messages) == want


def test_training_render_keeps_the_last_turns_reasoning_and_ends_with_return(tok):
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "thinking": "Add them.", "content": "4"},
    ]
    want = (
        system()
        + "<|start|>user<|message|>2+2?<|end|>"
        + "<|start|>assistant<|channel|>analysis<|message|>Add them.<|end|>"
        + "<|start|>assistant<|channel|>final<|message|>4<|return|>"
    )
    assert render(tok, messages, add_generation_prompt=False) == want


def test_eos_is_return_and_the_spec_matches_the_render(tok):
    spec = resolve_template("harmony")
    assert spec.name == "gpt-oss" and resolve_template("gpt_oss") is spec
    assert tok.eos_token == "<|return|>"
    assert {"<|return|>", "<|call|>"} <= set(spec.stop_tokens)
    text = render(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}] * 2)
    assert text.count(spec.instruction_part) == 2 and text.count(spec.response_part) == 2


def test_system_message_default_becomes_the_developer_instructions(tok):
    mine = get_chat_template(harmony_tokenizer(), "gpt-oss", system_message="Be brief.")
    chat = [{"role": "user", "content": "Hi"}]
    assert (
        render(mine, chat)
        == system() + developer("Be brief.") + "<|start|>user<|message|>Hi<|end|><|start|>assistant"
    )


def test_no_ollama_template_for_harmony(tok):
    with pytest.warns(UserWarning, match="no TEMPLATE"):
        text = modelfile_for(tok, "m.gguf")
    assert "TEMPLATE" not in text
