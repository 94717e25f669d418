"""SFT data: rows → token ids, the padding collator, and packing.

Works on a `datasets.Dataset` or a plain list of dicts (through the row helpers of
`loris.data._rows`); the result is of the same kind.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from loris.data import IGNORE_INDEX, _rows
from loris.data._rows import from_rows, is_hf_dataset

MODEL_COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids")
_OVERFLOW = "__loris_truncated"  # temporary column: the row was cut to max_length
CONVERSATION_COLUMNS = ("messages", "conversations")
_SCANNED_ROWS = 1000  # a list's columns are read from its first rows


def map_rows(data: Any, fn: Callable[[dict], dict], num_proc: int | None = None, desc: str = "") -> Any:
    """``fn(row) -> new row`` over every row; the old columns are dropped."""
    if is_hf_dataset(data):
        return _rows.map_rows(data, fn, data.column_names, num_proc=num_proc, desc=desc or None)
    return [fn(row) for row in data]


# ------------------------------------------------------------------------------------------ tokenizing
@dataclass
class TokenizeSpec:
    """What `prepare_dataset` needs to know, taken from `SFTConfig` and the trainer's arguments."""

    max_length: int | None
    dataset_text_field: str = "text"
    eos_token: str | None = None
    add_special_tokens: bool | None = None  # None: yes, unless the text already starts with BOS
    completion_only_loss: bool | None = None
    num_proc: int | None = None


def _text_to_ids(tokenizer: Any, text: str, spec: TokenizeSpec) -> list[int]:
    special = spec.add_special_tokens
    if special is None:
        bos = getattr(tokenizer, "bos_token", None)
        special = not (bos and text.startswith(bos))  # a rendered chat template already holds BOS
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _with_eos(text: str, eos: str | None) -> str:
    return text if not eos or text.endswith(eos) else text + eos


def _render_chat(tokenizer: Any, messages: Any, column: str) -> str:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"Column {column!r} should hold lists of {{'role', 'content'}} messages.")
    if messages and "role" not in messages[0] and "from" in messages[0]:
        raise ValueError(
            f"Column {column!r} holds ShareGPT turns ('from'/'value'). Convert them first with "
            "loris.chat_templates.standardize_sharegpt(dataset)."
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "Conversational rows need a chat template, and the tokenizer has none. Set one with "
            "loris.chat_templates.get_chat_template(tokenizer, 'chatml') (or the model's own)."
        )
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _formatted(formatting_func: Callable, row: dict) -> str:
    """``formatting_func`` of one row; old TRL-style batched functions (a batch of columns in, a list of
    strings out) are run on a batch of one instead."""
    error: Exception | None = None
    try:
        out = formatting_func(row)
        if isinstance(out, str):
            return out
    except Exception as exc:  # e.g. a batched function zipping the characters of two strings
        error = exc
    try:
        out = formatting_func({k: [v] for k, v in row.items()})
    except Exception:
        if error is not None:
            raise error from None
        raise
    if isinstance(out, list) and len(out) == 1 and isinstance(out[0], str):
        return out[0]
    if error is not None:
        raise error
    raise TypeError(
        "formatting_func must return a string for one row (or, TRL's old style, a list of strings for "
        f"a batch); it returned {type(out).__name__}."
    )


def _truncate(row: dict, max_length: int | None) -> dict:
    """``row`` with its token columns cut to ``max_length``, flagged in a temporary column when cut."""
    if max_length is None:
        return row
    cut = {k: (v[:max_length] if k in MODEL_COLUMNS and isinstance(v, list) else v) for k, v in row.items()}
    cut[_OVERFLOW] = len(row.get("input_ids") or ()) > max_length
    return cut


def _warn_truncated(data: Any, max_length: int | None) -> Any:
    """Drop the temporary flag column, warning once with the number of rows that were cut."""
    if max_length is None:
        return data
    if is_hf_dataset(data):
        if _OVERFLOW not in data.column_names:
            return data
        count = sum(data[_OVERFLOW])
        data = data.remove_columns(_OVERFLOW)
    else:
        count = sum(bool(row.pop(_OVERFLOW, False)) for row in data)
    if count:
        warnings.warn(
            f"{count} of {len(data)} samples are longer than max_length={max_length} tokens and were "
            "truncated (their ends are not trained on). Raise max_length (max_seq_length) or shorten them.",
            stacklevel=3,
        )
    return data


def prepare_dataset(
    data: Any,
    tokenizer: Any,
    spec: TokenizeSpec,
    formatting_func: Callable | None = None,
) -> Any:
    """Rows → ``input_ids`` + ``attention_mask`` (+ ``labels``), truncated to ``max_length``.

    Sources, first match wins: already tokenized rows (``input_ids``; a ``labels`` column is kept),
    ``formatting_func(row) -> str``, the ``dataset_text_field`` column (strings, or lists of
    messages), a ``messages``/``conversations`` column rendered with the tokenizer's chat template,
    or ``prompt``/``completion`` strings (loss on the completion only unless
    ``completion_only_loss=False``). Plain text gets ``eos_token`` appended when it does not already
    end with it (TRL's rule); text starting with BOS is tokenized without adding another.
    """
    if hasattr(data, "__len__") and len(data) == 0:
        raise ValueError(
            "The dataset is empty (0 rows): nothing to train on. Check the file, split or filtering "
            "that produced it."
        )
    names = _rows.column_names(data, limit=_SCANNED_ROWS)
    if "input_ids" in names:
        if spec.max_length is None:
            return data
        if is_hf_dataset(data):
            data = data.map(
                lambda r: _truncate(r, spec.max_length), num_proc=spec.num_proc, desc="Truncating"
            )
        else:
            data = [_truncate(r, spec.max_length) for r in data]
        return _warn_truncated(data, spec.max_length)
    if tokenizer is None:
        raise ValueError(
            "The dataset is not tokenized and there is no tokenizer: pass processing_class=tokenizer."
        )

    field = spec.dataset_text_field
    if formatting_func is not None:

        def to_text(row: dict) -> str:
            return _with_eos(_formatted(formatting_func, row), spec.eos_token)

    elif field in names:

        def to_text(row: dict) -> str:
            value = row[field]
            if isinstance(value, list):
                return _render_chat(tokenizer, value, field)
            if not isinstance(value, str):
                raise ValueError(f"Column {field!r} should hold strings, found {type(value).__name__}.")
            return _with_eos(value, spec.eos_token)

    elif conv := next((c for c in CONVERSATION_COLUMNS if c in names), None):

        def to_text(row: dict) -> str:
            return _render_chat(tokenizer, row[conv], conv)

    elif "prompt" in names and "completion" in names:
        data = map_rows(
            data,
            lambda row: _prompt_completion(tokenizer, row, spec),
            spec.num_proc,
            "Tokenizing prompt-completion rows",
        )
        return _warn_truncated(data, spec.max_length)
    else:
        raise ValueError(
            f"The dataset has no {field!r} column to train on (columns: {names}). Set "
            "dataset_text_field to the column holding the text, pass a formatting_func, give a "
            "'messages' column of chat turns, or tokenize yourself into 'input_ids'."
        )

    def tokenize(row: dict) -> dict:
        ids = _text_to_ids(tokenizer, to_text(row), spec)
        return _truncate({"input_ids": ids, "attention_mask": [1] * len(ids)}, spec.max_length)

    return _warn_truncated(map_rows(data, tokenize, spec.num_proc, "Tokenizing"), spec.max_length)


def _prompt_completion(tokenizer: Any, row: dict, spec: TokenizeSpec) -> dict:
    prompt, completion = row["prompt"], row["completion"]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError(
            "prompt/completion columns must hold strings here; render conversational ones to text with "
            "the chat template first."
        )
    p_ids = _text_to_ids(tokenizer, prompt, spec)
    c_ids = list(tokenizer(_with_eos(completion, spec.eos_token), add_special_tokens=False)["input_ids"])
    ids = p_ids + c_ids
    masked = spec.completion_only_loss is not False
    labels = ([IGNORE_INDEX] * len(p_ids) if masked else p_ids) + c_ids
    out = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
    return _truncate(out, spec.max_length)


# -------------------------------------------------------------------------------------------- packing
def pack_dataset(data: Any, max_length: int) -> Any:
    """Greedily fill rows of up to ``max_length`` tokens with whole examples, in dataset order.

    Each packed row carries ``position_ids`` restarting at 0 for every example and ``labels`` whose
    first token of every example is -100, so no loss term predicts one example from another. The
    model reads the restarting position ids as sample boundaries and keeps attention inside each
    sample, so a packed step trains exactly as the same samples unpacked (same tokens scored, same
    loss): packing only removes the padding.
    """
    rows = (
        data
        if not is_hf_dataset(data)
        else data.select_columns([c for c in MODEL_COLUMNS if c in data.column_names])
    )
    packed: list[dict] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []

    def flush() -> None:
        if ids:
            packed.append(
                {
                    "input_ids": list(ids),
                    "attention_mask": [1] * len(ids),
                    "labels": list(labels),
                    "position_ids": list(positions),
                }
            )
            ids.clear(), labels.clear(), positions.clear()

    for row in rows:
        row_ids = list(row["input_ids"])[:max_length]
        if not row_ids:
            continue
        row_labels = list(row["labels"])[:max_length] if row.get("labels") is not None else list(row_ids)
        mask = row.get("attention_mask")
        if mask is not None:  # keep only real tokens
            keep = [i for i, m in enumerate(list(mask)[: len(row_ids)]) if m]
            row_ids = [row_ids[i] for i in keep]
            row_labels = [row_labels[i] for i in keep]
        if len(ids) + len(row_ids) > max_length:
            flush()
        ids.extend(row_ids)
        labels.extend([IGNORE_INDEX, *row_labels[1:]])
        positions.extend(range(len(row_ids)))
    flush()
    return from_rows(data, packed)


# -------------------------------------------------------------------------------------------- collators
@dataclass
class SFTCollator:
    """Right-pads a list of tokenized rows into tensors.

    ``labels`` default to ``input_ids`` where ``attention_mask`` is 1 and -100 on padding — decided by
    the mask, not by the pad id, so a pad id equal to EOS never hides the real EOS. Given labels are
    padded with -100; ``position_ids`` (packed rows) with 0.
    """

    pad_token_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        masks = [
            list(f["attention_mask"]) if f.get("attention_mask") is not None else [1] * len(i)
            for f, i in zip(features, ids, strict=True)
        ]
        width = max(len(i) for i in ids)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def pad(rows: list[list[int]], value: int) -> torch.Tensor:
            return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

        batch = {"input_ids": pad(ids, self.pad_token_id), "attention_mask": pad(masks, 0)}
        if all(f.get("labels") is not None for f in features):
            batch["labels"] = pad([list(f["labels"]) for f in features], IGNORE_INDEX)
        else:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        if all(f.get("position_ids") is not None for f in features):
            batch["position_ids"] = pad([list(f["position_ids"]) for f in features], 0)
        return batch


@dataclass
class ModelColumnsCollator:
    """Calls a user's collator (e.g. transformers' `DataCollatorForSeq2Seq`) on the model columns only,
    as transformers' Trainer does with ``remove_unused_columns``."""

    collator: Callable[[list[dict]], Any]

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        return self.collator([{k: v for k, v in f.items() if k in MODEL_COLUMNS} for f in features])
