"""Response-only labels: hand-built ids, then real renders whose kept text is checked against the chat."""

from __future__ import annotations

import warnings

import datasets
import pytest

from loris.chat_templates import (
    detect_response_parts,
    get_chat_template,
    response_only_labels,
    train_on_responses_only,
)
from loris.data.masking import marker_token_ids
from loris.data.registry import TEMPLATES

X = -100


class StandInTrainer:
    """The attributes train_on_responses_only relies on, nothing more."""

    def __init__(self, train_dataset, tokenizer, eval_dataset=None, attr="processing_class"):
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        setattr(self, attr, tokenizer)


# ------------------------------------------------------------------------------------------- pure function
def test_hand_built_ids():
    #      bos  instr   user  eos  resp   answer....  eos  instr  user eos resp  ans eos
    ids = [1, 5, 6, 10, 11, 2, 7, 8, 20, 21, 22, 2, 5, 6, 30, 2, 7, 8, 40, 2]
    want = [X] * 8 + [20, 21, 22, 2] + [X] * 6 + [40, 2]
    assert response_only_labels(ids, [5, 6], [7, 8]) == want
    assert response_only_labels(ids, [5, 6], [7, 8], last_response_only=True) == [X] * 18 + [40, 2]
    assert response_only_labels(ids, [5, 6], [7, 8], ignore_index=-1)[:3] == [-1, -1, -1]
    assert response_only_labels(ids, [5, 6], [9, 9]) == [X] * len(ids)  # no response marker
    assert response_only_labels([7, 8], [5], [7, 8]) == [X, X]  # marker at the very end
    # Alternatives: a marker may tokenize two ways; the longer one wins where both match.
    assert response_only_labels([7, 8, 3, 4, 5, 9], [[5], [4, 5]], [[7], [7, 8]]) == [X, X, 3, X, X, X]
    # A partial marker does not count.
    assert response_only_labels([5, 7, 3, 5, 6, 4], [5, 6], [7, 8]) == [X] * 6
    with pytest.raises(ValueError, match="instruction_ids is empty"):
        response_only_labels(ids, [], [7, 8])


# ------------------------------------------------------------------------------- real renders, every template
ANSWERS = ["I am a helpful assistant.", "3+3 equals 6."]
# What each template writes around an answer: (text before it inside the labels, text after it).
TURN_TEXT = {
    "chatml": ("", "<|im_end|>\n"),
    "smollm2": ("", "<|im_end|>\n"),
    "qwen-2.5": ("", "<|im_end|>\n"),
    "qwen-3": ("", "<|im_end|>\n"),
    "llama-3": ("", "<|eot_id|>"),
    "llama-3.1": ("", "<|eot_id|>"),
    "llama-3.2": ("", "<|eot_id|>"),
    "mistral": (" ", "</s>"),
    "gemma": ("", "<end_of_turn>\n"),
    "gemma2": ("", "<end_of_turn>\n"),
    "gemma-3": ("", "<end_of_turn>\n"),
    "phi-3": ("", "<|end|>\n"),
    "phi-3.5": ("", "<|end|>\n"),
    "phi-4": ("", "<|im_end|>"),
    "zephyr": ("", "</s>\n"),
    "alpaca": ("", "</s>\n\n"),
    "vicuna": (" ", "</s>\n"),
    "unsloth": (" ", "</s>\n"),
    "gpt-oss": ("", "<|end|>"),
}
# phi-3 appends EOS after the last turn when no generation prompt is asked for (EOS is <|end|> once mapped).
LAST_EXTRA = {"phi-3": "<|end|>", "phi-3.5": "<|end|>"}
# Qwen3 writes an empty think block into the final answer (the part the model generates).
LAST_LEAD = {"qwen-3": "<think>\n\n</think>\n\n"}
# gpt-oss ends the trained last turn with <|return|> (earlier ones with <|end|>).
LAST_END = {"gpt-oss": "<|return|>"}


def test_turn_table_covers_the_registry():
    assert set(TURN_TEXT) == set(TEMPLATES)


def _chat(name: str) -> list[dict]:
    msgs = [] if not TEMPLATES[name].supports_system else [{"role": "system", "content": "You are concise."}]
    return msgs + [
        {"role": "user", "content": "Hi! Who are you?"},
        {"role": "assistant", "content": ANSWERS[0]},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": ANSWERS[1]},
    ]


def _kept_texts(tok, text: str, labels: list[int]) -> list[str]:
    """The substrings of ``text`` under each run of kept labels (via token offsets, no decoding)."""
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    runs, start = [], None
    for i, lab in enumerate(labels + [X]):
        if lab != X and start is None:
            start = i
        elif lab == X and start is not None:
            runs.append(text[offsets[start][0] : offsets[i - 1][1]])
            start = None
    return runs


def _masked_row(tok, text):
    enc = tok(text, add_special_tokens=False)
    trainer = StandInTrainer([{"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}], tok)
    return train_on_responses_only(trainer).train_dataset[0]


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_labels_cover_exactly_the_answers(build_tokenizer, name, kind):
    tok = get_chat_template(build_tokenizer(kind), name)
    text = tok.apply_chat_template(_chat(name), tokenize=False, date_string="26 Jul 2024")
    row = _masked_row(tok, text)
    lead, end = TURN_TEXT[name]
    last = LAST_LEAD.get(name, lead) + ANSWERS[1] + LAST_END.get(name, end) + LAST_EXTRA.get(name, "")
    expected = [lead + ANSWERS[0] + end, last]
    kept = _kept_texts(tok, text, row["labels"])
    if kind == "bytelevel":
        assert kept == expected
    else:  # sentencepiece-style merges may glue a turn's trailing newlines to the next marker's token
        assert [k.rstrip() for k in kept] == [e.rstrip() for e in expected]
        assert all(e.startswith(k) for k, e in zip(kept, expected, strict=True))
    assert all(lab in (X, tid) for lab, tid in zip(row["labels"], row["input_ids"], strict=True))


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_probe_finds_the_registry_markers(build_tokenizer, name, kind):
    tok = get_chat_template(build_tokenizer(kind), name)
    spec = TEMPLATES[name]
    assert detect_response_parts(tok) == (spec.instruction_part, spec.response_part)


@pytest.mark.parametrize("name", ["smollm2", "chatml"])
def test_real_smollm2_tokenizer(smol_tokenizer, name):
    tok = get_chat_template(smol_tokenizer, name)
    answers = ["I am SmolLM.", " 4 (four)", "Line one\nline two\n", "\nStarts on a new line"]
    chat = [{"role": "system", "content": "Be brief."}]
    for i, answer in enumerate(answers):
        chat += [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": answer}]
    text = tok.apply_chat_template(chat, tokenize=False)
    row = _masked_row(tok, text)
    assert _kept_texts(tok, text, row["labels"]) == [a + "<|im_end|>\n" for a in answers]
    ids = marker_token_ids(tok, "<|im_start|>assistant\n")
    assert ids[0] == tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------- train_on_responses_only
def _rows(tok, chats):
    rows = []
    for chat in chats:
        enc = tok.apply_chat_template(chat, tokenize=True, return_dict=True)
        rows.append({"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])})
    return rows


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize("as_dataset", [False, True])
def test_drops_rows_left_fully_masked(build_tokenizer, as_dataset):
    tok = get_chat_template(build_tokenizer(), "chatml")
    rows = _rows(tok, [[_u("q"), _a("a")], [_u("only a question")], [_u("q2"), _a("a2")]])
    truncated = dict(rows[2])
    truncated["input_ids"] = truncated["input_ids"][:5]  # cut before the answer
    truncated["attention_mask"] = truncated["attention_mask"][:5]
    rows.append(truncated)
    data = datasets.Dataset.from_list(rows) if as_dataset else rows
    trainer = StandInTrainer(data, tok, eval_dataset=data, attr="tokenizer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_on_responses_only(trainer)
    messages = [str(w.message) for w in caught]
    for which in ("train_dataset", "eval_dataset"):
        assert any(f"dropped 2 of 4 rows of trainer.{which}" in m for m in messages), messages
    assert out is trainer and len(trainer.train_dataset) == 2 and len(trainer.eval_dataset) == 2
    assert isinstance(trainer.train_dataset, datasets.Dataset) == as_dataset
    kept = [tok.decode([t for t in r["labels"] if t != X]) for r in trainer.train_dataset]
    assert kept == ["a<|im_end|>\n", "a2<|im_end|>\n"]


def test_existing_labels_padding_and_last_response_only(build_tokenizer):
    tok = get_chat_template(build_tokenizer(), "chatml")
    (row,) = _rows(tok, [[_u("q"), _a("first"), _u("q2"), _a("second")]])
    n = len(row["input_ids"])
    pad = tok.convert_tokens_to_ids("</s>")
    row = {
        "input_ids": row["input_ids"] + [pad, pad],
        "attention_mask": row["attention_mask"] + [0, 0],
        "labels": [X] * (n - 3) + row["input_ids"][n - 3 :] + [X, X],  # earlier masking kept
    }
    trainer = train_on_responses_only(StandInTrainer([row], tok))
    labels = trainer.train_dataset[0]["labels"]
    assert labels[-2:] == [X, X]  # padding never trained
    assert tok.decode([t for t in labels if t != X]) == tok.decode(row["input_ids"][n - 3 : n])
    trainer = train_on_responses_only(
        StandInTrainer([{k: row[k] for k in ("input_ids",)}], tok), last_response_only=True
    )
    assert tok.decode([t for t in trainer.train_dataset[0]["labels"] if t != X]).startswith(
        "second<|im_end|>"
    )


def test_explicit_parts_and_force_match(build_tokenizer):
    tok = get_chat_template(build_tokenizer(), "llama-3.1")
    rows = _rows(tok, [[_u("q"), _a("a")]])
    trainer = train_on_responses_only(
        StandInTrainer(rows, tok),
        instruction_part="<|start_header_id|>user<|end_header_id|>\n\n",
        response_part="<|start_header_id|>assistant<|end_header_id|>\n\n",
    )
    assert tok.decode([t for t in trainer.train_dataset[0]["labels"] if t != X]) == "a<|eot_id|>"
    wrong = "<|start_header_id|>assistant<|end_header_id|>\n\n\n"  # one newline too many
    with pytest.raises(ValueError, match="lost all its labels"):
        train_on_responses_only(StandInTrainer(rows, tok), response_part=wrong)
    trainer = train_on_responses_only(StandInTrainer(rows, tok), response_part=wrong, force_match=False)
    assert tok.decode([t for t in trainer.train_dataset[0]["labels"] if t != X]).strip() == "a<|eot_id|>"


def test_detect_falls_back_to_the_registry(build_tokenizer):
    class Refuses:  # a tokenizer whose template cannot render the probe, but is a known one
        chat_template = TEMPLATES["phi-4"].template
        eos_token = "<|im_end|>"

        def apply_chat_template(self, *args, **kwargs):
            raise RuntimeError("no")

    assert detect_response_parts(Refuses()) == (
        TEMPLATES["phi-4"].instruction_part,
        TEMPLATES["phi-4"].response_part,
    )
    Refuses.chat_template = "{{ raise_exception('unknown') }}"
    with pytest.raises(ValueError, match="Pass them explicitly"):
        detect_response_parts(Refuses())
    with pytest.raises(ValueError, match="no chat template"):
        detect_response_parts(build_tokenizer())


def test_needs_tokenized_rows(build_tokenizer):
    tok = get_chat_template(build_tokenizer(), "chatml")
    with pytest.raises(ValueError, match="no input_ids column"):
        train_on_responses_only(StandInTrainer([{"text": "hello"}], tok))
