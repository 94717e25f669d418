"""Response-only training: labels that keep the assistant's tokens and mask (-100) everything else.

Markers are matched as token-id subsequences. A marker's ids depend on what surrounds it (BPE merges a
trailing space or newline with the next word; sentencepiece glues "▁" to it), so each marker is turned
into several id sequences: its plain encoding and the ids it gets inside real renders of the chat
template and a few synthetic contexts. Any of them marks a turn boundary.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from loris.data._rows import Rows, column_names, is_hf_dataset

__all__ = [
    "response_only_labels",
    "detect_response_parts",
    "marker_token_ids",
    "train_on_responses_only",
]

IdSeqs = Sequence[int] | Sequence[Sequence[int]]

_PROBE = ("Lorisprobe user one", "Lorisprobe answer one", "Lorisprobe user two", "Lorisprobe answer two")
_BEFORE = ("", "Hello.", "Hello.\n", "Hello.\n\n", "Hello. ", "4")
_AFTER = ("", "Hello", " Hello", "\nHello", "\n\nHello", "1", " 1", "\n")


def _alternatives(ids: IdSeqs, what: str) -> list[tuple[int, ...]]:
    seqs = list(ids)
    if seqs and all(isinstance(x, int) for x in seqs):
        seqs = [seqs]
    alts = {tuple(int(t) for t in s) for s in seqs}
    alts.discard(())
    if not alts:
        raise ValueError(f"{what} is empty: pass the marker's token ids (or a list of alternative id lists).")
    return sorted(alts, key=len, reverse=True)


def _match(ids: Sequence[int], i: int, alts: list[tuple[int, ...]]) -> int:
    for alt in alts:
        if tuple(ids[i : i + len(alt)]) == alt:
            return len(alt)
    return 0


def response_only_labels(
    input_ids: Sequence[int],
    instruction_ids: IdSeqs,
    response_ids: IdSeqs,
    ignore_index: int = -100,
    last_response_only: bool = False,
) -> list[int]:
    """Labels equal to ``input_ids`` from the end of each response marker up to the next instruction marker
    (or the end), ``ignore_index`` elsewhere. Markers are id sequences or lists of alternative ones.
    """
    ids = [int(t) for t in input_ids]
    instr = _alternatives(instruction_ids, "instruction_ids")
    resp = _alternatives(response_ids, "response_ids")
    instr_first = {a[0] for a in instr}
    resp_first = {a[0] for a in resp}
    spans: list[tuple[int, int]] = []
    i, n = 0, len(ids)
    while i < n:
        m = _match(ids, i, resp) if ids[i] in resp_first else 0
        if not m:
            i += 1
            continue
        start = end = i + m
        while end < n and not (ids[end] in instr_first and _match(ids, end, instr)):
            end += 1
        spans.append((start, end))
        i = end
    if last_response_only:
        spans = spans[-1:]
    labels = [ignore_index] * n
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return labels


# ------------------------------------------------------------------------------------------- marker discovery
def _render(tokenizer: Any, messages: list[dict], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _probe_parts(tokenizer: Any) -> tuple[str, str] | None:
    """Find (instruction, response) markers by rendering a probe chat; None when the result is unusable."""
    u1, a1, u2, _ = _PROBE
    msgs = [
        {"role": "user", "content": u1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": u2},
    ]
    try:
        full = _render(tokenizer, msgs, False)
        user_only = _render(tokenizer, msgs[:1], False)
        with_answer = _render(tokenizer, msgs[:2], False)
    except Exception:  # templates may reject the probe (e.g. they need a system turn)
        return None
    try:
        between_ua = full[full.index(u1) + len(u1) : full.index(a1)]
        between_au = full[full.index(a1) + len(a1) : full.index(u2)]
        user_end = user_only[user_only.index(u1) + len(u1) :]
        answer_end = with_answer[with_answer.index(a1) + len(a1) :]
    except ValueError:  # content was rewritten by the template
        return None

    def strip_turn_end(between: str, turn_end: str, other_end: str) -> str:
        eos = tokenizer.eos_token or ""
        trimmed = turn_end[: -len(eos)] if eos and turn_end.endswith(eos) else None
        # other_end: the other role's turn closer, for templates that end a chat's last turn unlike
        # the others (gpt-oss: <|return|> after the last answer, <|end|> after every other turn)
        for end in (turn_end, trimmed or None, other_end or None, ""):
            if end is not None and between.startswith(end):
                marker = between[len(end) :].rstrip(" ")
                # The marker may *be* the closer of the previous turn (Mistral: "... [/INST] answer").
                return marker if marker.strip() else between.rstrip(" ")
        return between.rstrip(" ")

    instruction = strip_turn_end(between_au, answer_end, user_end)
    response = strip_turn_end(between_ua, user_end, answer_end)
    if not instruction.strip() or not response.strip() or instruction == response:
        return None
    return instruction, response


def detect_response_parts(tokenizer: Any) -> tuple[str, str]:
    """(instruction_part, response_part) for the tokenizer's chat template.

    Found by rendering a probe chat; templates the probe cannot read fall back to the registry's known
    markers. Raise when neither works, asking for explicit parts.
    """
    from loris.data.chat_templates import spec_for_tokenizer

    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The tokenizer has no chat template: call get_chat_template first, or pass instruction_part and "
            "response_part."
        )
    parts = _probe_parts(tokenizer)
    if parts is not None:
        return parts
    spec = spec_for_tokenizer(tokenizer)
    if spec is not None:
        return spec.instruction_part, spec.response_part
    raise ValueError(
        "Could not find the user/assistant markers of this chat template. Pass them explicitly, e.g. "
        'train_on_responses_only(trainer, instruction_part="<|im_start|>user\\n", '
        'response_part="<|im_start|>assistant\\n").'
    )


def _encode(tokenizer: Any, text: str, offsets: bool = False) -> Any:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)


def _covering(tokenizer: Any, text: str, start: int, end: int) -> tuple[int, ...]:
    """Ids of the tokens that spell text[start:end] when the whole text is tokenized.

    A token straddling an edge of the span is kept when the part outside is whitespace (BPE often glues
    a newline run to the next word: "\n\n###"), and dropped otherwise.
    """
    enc = _encode(tokenizer, text, offsets=True)
    out = []
    for tid, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if e <= start or s >= end or e == s:
            continue
        outside = text[s:start] + text[end:e]
        if outside.strip() == "":
            out.append(tid)
    return tuple(out)


def marker_token_ids(tokenizer: Any, marker: str, force_match: bool = True) -> list[list[int]]:
    """Every id sequence ``marker`` takes: alone, inside renders of the chat template, inside a few
    contexts. Sequences lose at most edge whitespace of the marker. ``force_match=False`` also accepts the
    marker without its edge whitespace (e.g. a header without its trailing newline).
    """
    markers = [marker] if force_match or marker.strip() == marker else [marker, marker.strip()]
    found: set[tuple[int, ...]] = set()
    for m in markers:
        found.add(tuple(_encode(tokenizer, m)["input_ids"]))
        texts = [(b + m + a, len(b)) for b in _BEFORE for a in _AFTER]
        for rendered in _template_renders(tokenizer):
            pos = rendered.find(m)
            while pos != -1:
                texts.append((rendered, pos))
                pos = rendered.find(m, pos + 1)
        for text, pos in texts:
            try:
                found.add(_covering(tokenizer, text, pos, pos + len(m)))
            except (NotImplementedError, KeyError, TypeError):  # no offsets (slow tokenizer): plain only
                break
    want = marker.strip()
    ok = [list(ids) for ids in found if ids and tokenizer.decode(list(ids)).strip() == want]
    if not ok:
        raise ValueError(
            f"The marker {marker!r} does not tokenize to any id sequence that decodes back to it."
        )
    return sorted(ok, key=len, reverse=True)


def _template_renders(tokenizer: Any) -> list[str]:
    if not getattr(tokenizer, "chat_template", None):
        return []
    u1, a1, u2, a2 = _PROBE
    chats = [
        [{"role": "user", "content": u1}, {"role": "assistant", "content": a1}],
        [
            {"role": "user", "content": "Hi! Who are you?"},
            {"role": "assistant", "content": "I am a helpful assistant."},
            {"role": "user", "content": "What is 2+2?\n"},
            {"role": "assistant", "content": " 4"},
        ],
        [{"role": "user", "content": u2}, {"role": "assistant", "content": a2}],
    ]
    out = []
    for chat in chats:
        try:
            out.append(_render(tokenizer, chat, False))
        except Exception:  # a template may refuse a probe; the synthetic contexts still apply
            continue
    return out


# --------------------------------------------------------------------------------------------- the trainer API
def _tokenizer_of(trainer: Any) -> Any:
    tok = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
    if tok is None:
        raise ValueError("The trainer has no processing_class or tokenizer to find the chat markers with.")
    return getattr(tok, "tokenizer", tok)  # a multimodal processor wraps its tokenizer


def _mask_dataset(
    data: Rows, instr: list[list[int]], resp: list[list[int]], last_response_only: bool, which: str
) -> Rows:
    names = column_names(data)
    if "input_ids" not in names:
        raise ValueError(
            f"trainer.{which} has no input_ids column (columns: {names}); train_on_responses_only needs "
            "tokenized data. Tokenize first (the loris SFTTrainer does so when it is built)."
        )

    def labels_for(row: dict) -> list[int]:
        new = response_only_labels(row["input_ids"], instr, resp, last_response_only=last_response_only)
        old = row.get("labels")
        if old is not None:  # keep masks that were already there
            new = [o if (n != -100 and o != -100) else -100 for n, o in zip(new, old, strict=True)]
        mask = row.get("attention_mask")
        if mask is not None:
            new = [lab if m else -100 for lab, m in zip(new, mask, strict=True)]
        return new

    if is_hf_dataset(data):
        out = data.map(lambda row: {"labels": labels_for(row)}, desc="Masking non-response tokens")
        keep = [any(lab != -100 for lab in labels) for labels in out["labels"]]
    else:
        out = [{**row, "labels": labels_for(row)} for row in data]
        keep = [any(lab != -100 for lab in row["labels"]) for row in out]
    dropped = len(keep) - sum(keep)
    if dropped == len(keep) and keep:
        raise ValueError(
            f"Every row of trainer.{which} lost all its labels: the response marker never occurs in the tokens. "
            "Check instruction_part/response_part against the chat template (or raise the max sequence length)."
        )
    if dropped:
        warnings.warn(
            f"train_on_responses_only: dropped {dropped} of {len(keep)} rows of trainer.{which} that had no "
            "response tokens left (truncated before the answer, or no assistant turn).",
            stacklevel=3,
        )
        out = (
            out.select([i for i, k in enumerate(keep) if k])
            if is_hf_dataset(out)
            else [r for r, k in zip(out, keep, strict=True) if k]
        )
    return out


def train_on_responses_only(
    trainer: Any,
    instruction_part: str | None = None,
    response_part: str | None = None,
    force_match: bool = True,
    last_response_only: bool = False,
) -> Any:
    """Mask the labels of ``trainer.train_dataset`` (and ``eval_dataset``) to the assistant's tokens.

    Markers default to those of the tokenizer's chat template (``detect_response_parts``). Rows left with
    no response tokens are dropped, with a warning giving the count. ``force_match=False`` also matches
    the markers without their edge whitespace. Returns the trainer, whose datasets are replaced.
    """
    tokenizer = _tokenizer_of(trainer)
    if instruction_part is None or response_part is None:
        found_instruction, found_response = detect_response_parts(tokenizer)
        instruction_part = instruction_part if instruction_part is not None else found_instruction
        response_part = response_part if response_part is not None else found_response
    instr = marker_token_ids(tokenizer, instruction_part, force_match)
    resp = marker_token_ids(tokenizer, response_part, force_match)
    trainer.train_dataset = _mask_dataset(
        trainer.train_dataset, instr, resp, last_response_only, "train_dataset"
    )
    eval_data = getattr(trainer, "eval_dataset", None)
    if isinstance(eval_data, dict):
        trainer.eval_dataset = {
            k: _mask_dataset(v, instr, resp, last_response_only, f"eval_dataset[{k!r}]")
            for k, v in eval_data.items()
        }
    elif eval_data is not None:
        trainer.eval_dataset = _mask_dataset(eval_data, instr, resp, last_response_only, "eval_dataset")
    return trainer
