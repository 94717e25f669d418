"""ShareGPT-style data: turn ``{"from", "value"}`` conversations into ``{"role", "content"}`` ones.

Also ``to_sharegpt``, which turns single-turn column data (Alpaca-like) into conversations through a
small prompt language: ``{column}`` inserts a column, ``[[ ... ]]`` is an optional section dropped when
every column inside it is empty, ``{{`` / ``}}`` are literal braces.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loris.data._rows import Rows, column, column_names, from_columns, head, is_hf_dataset, map_rows

__all__ = ["standardize_sharegpt", "standardize_data_formats", "to_sharegpt", "MergedPrompt"]

_ROLE_KEYS = ("role", "from")
_CONTENT_KEYS = ("content", "value", "text")
_DEFAULT_SYSTEM = ("system",)
_DEFAULT_USER = ("user", "human", "input")
_DEFAULT_ASSISTANT = ("assistant", "gpt", "output", "model")
_INFER_ROWS = 200


def _conversation_column(data: Rows) -> str:
    names = column_names(data)
    for name in ("conversations", "messages"):
        if name in names:
            return name
    raise ValueError(
        f"No 'conversations' column (columns: {names}). standardize_sharegpt needs a column of message "
        "lists; for instruction/output columns use to_sharegpt(...) first."
    )


def _infer_keys(conversations: Iterable[Any], col: str, roles: set[str]) -> tuple[str, str]:
    """Find which message keys hold the role and the content (e.g. from/value or role/content)."""
    keys: dict[str, None] = {}
    role_values: dict[str, set] = {}
    for r, conv in enumerate(conversations):
        if r >= _INFER_ROWS:
            break
        if not isinstance(conv, (list, tuple)):
            raise ValueError(f"Row {r} of column {col!r} is a {type(conv).__name__}, not a list of messages.")
        for msg in conv:
            if not isinstance(msg, dict):
                raise ValueError(
                    f"Row {r} of column {col!r} holds a {type(msg).__name__}, not a message dict."
                )
            for k, v in msg.items():
                if v is None:  # Arrow fills keys missing from a row with None
                    continue
                keys.setdefault(k)
                role_values.setdefault(k, set()).add(v if isinstance(v, str) else None)
    role_key = next((k for k in _ROLE_KEYS if k in keys), None)
    if role_key is None:  # any key whose values are all known role names
        role_key = next((k for k in keys if role_values[k] and role_values[k] <= roles), None)
    content_key = next((k for k in _CONTENT_KEYS if k in keys and k != role_key), None)
    if content_key is None:
        rest = [k for k in keys if k != role_key]
        content_key = rest[0] if len(rest) == 1 else None
    if role_key is None or content_key is None:
        raise ValueError(
            f"Cannot tell which keys of the messages in {col!r} hold the role and the content (keys seen: "
            f"{list(keys)}). Expected role/content or from/value; rename the keys or pass the role names "
            "via aliases_for_user / aliases_for_assistant / aliases_for_system."
        )
    return role_key, content_key


def standardize_sharegpt(
    dataset: Rows,
    aliases_for_system: Sequence[str] = _DEFAULT_SYSTEM,
    aliases_for_user: Sequence[str] = _DEFAULT_USER,
    aliases_for_assistant: Sequence[str] = _DEFAULT_ASSISTANT,
) -> Rows:
    """Rewrite the ``conversations`` column to ``[{"role", "content"}]`` with roles system/user/assistant.

    Role and content keys are inferred (``from``/``value``, ``role``/``content``, ...); role names are
    mapped through the alias lists. Works on a ``datasets.Dataset`` or a list of dicts and returns the
    same kind. A ``messages`` column is used when there is no ``conversations`` column.
    """
    aliases = {}
    for target, names in (
        ("system", aliases_for_system),
        ("user", aliases_for_user),
        ("assistant", aliases_for_assistant),
    ):
        for name in names:
            if aliases.get(name, target) != target:
                raise ValueError(f"Role alias {name!r} is given for both {aliases[name]!r} and {target!r}.")
            aliases[name] = target
    col = _conversation_column(dataset)
    role_key, content_key = _infer_keys(head(dataset, col, _INFER_ROWS), col, set(aliases))

    def convert(conv: list[dict], row: int | None) -> list[dict]:
        out = []
        for msg in conv:
            role = msg.get(role_key)
            if role not in aliases:
                where = f"Row {row} of" if row is not None else "A row of"
                raise ValueError(
                    f"{where} column {col!r} has role {role!r} (key {role_key!r}), which is not a known alias. "
                    f"Known: system={list(aliases_for_system)}, user={list(aliases_for_user)}, "
                    f"assistant={list(aliases_for_assistant)}; pass e.g. aliases_for_assistant=[..., {role!r}]."
                )
            out.append({"role": aliases[role], "content": msg.get(content_key)})
        return out

    if is_hf_dataset(dataset):
        return dataset.map(
            lambda row, i: {col: convert(row[col], i)}, with_indices=True, remove_columns=[col]
        )
    return [{**row, col: convert(row[col], i)} for i, row in enumerate(dataset)]


standardize_data_formats = standardize_sharegpt


# ---------------------------------------------------------------------------------------------- to_sharegpt
_TOKEN = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{([^{}\[\]]*)\}|\{|\}")


@dataclass(frozen=True)
class Field:
    """``{name}`` in a merged prompt."""

    name: str


@dataclass(frozen=True)
class OptionalSection:
    """``[[ ... ]]`` in a merged prompt: dropped when every column inside it is empty."""

    parts: tuple[str | Field, ...]


@dataclass(frozen=True)
class MergedPrompt:
    """A parsed ``merged_prompt``: literal text, ``Field``s and ``OptionalSection``s."""

    parts: tuple[str | Field | OptionalSection, ...]

    @classmethod
    def parse(cls, text: str) -> MergedPrompt:
        top: list[Any] = []
        section: list[Any] | None = None
        pos = 0
        for m in _TOKEN.finditer(text):
            current = top if section is None else section
            if m.start() > pos:
                current.append(text[pos : m.start()])
            tok = m.group(0)
            if tok in ("{{", "}}"):
                current.append(tok[0])
            elif tok == "[[":
                if section is not None:
                    raise ValueError(f"Nested [[ ]] sections are not supported in merged_prompt {text!r}.")
                section = []
            elif tok == "]]":
                if section is None:
                    raise ValueError(f"']]' without '[[' in merged_prompt {text!r}.")
                top.append(OptionalSection(tuple(section)))
                section = None
            elif m.group(1) is not None and m.group(1).strip():
                current.append(Field(m.group(1).strip()))
            else:
                raise ValueError(
                    f"Stray {tok!r} at position {m.start()} in merged_prompt {text!r}: write {{column}} for a "
                    "column, {{ or }} for a literal brace."
                )
            pos = m.end()
        if section is not None:
            raise ValueError(f"'[[' without ']]' in merged_prompt {text!r}.")
        if pos < len(text):
            top.append(text[pos:])
        return cls(tuple(top))

    @property
    def columns(self) -> list[str]:
        names = []
        for p in self.parts:
            inner = p.parts if isinstance(p, OptionalSection) else (p,)
            names += [q.name for q in inner if isinstance(q, Field)]
        return list(dict.fromkeys(names))

    def render(self, row: dict) -> str:
        out = []
        for p in self.parts:
            if isinstance(p, OptionalSection):
                fields = [q.name for q in p.parts if isinstance(q, Field)]
                if fields and all(_empty(row[f]) for f in fields):
                    continue
                out += [_text(row[q.name]) if isinstance(q, Field) else q for q in p.parts]
            else:
                out.append(_text(row[p.name]) if isinstance(p, Field) else p)
        return "".join(out)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def to_sharegpt(
    dataset: Rows,
    merged_prompt: str = "",
    merged_column_name: str = "instruction",
    output_column_name: str = "output",
    remove_unused_columns: bool = True,
    conversation_extension: int = 1,
    random_state: int = 3407,
) -> Rows:
    """Turn single-turn column data into a ShareGPT ``conversations`` column (``from``/``value`` keys).

    ``merged_prompt`` builds the user turn from columns (``"{instruction}[[\\nInput: {input}]]"``); empty
    means use ``merged_column_name`` as is. ``conversation_extension=n`` appends the turns of n-1 other
    randomly chosen rows (seeded by ``random_state``) so the model also sees multi-turn chats; the number
    of rows is unchanged.
    """
    names = column_names(dataset)
    prompt = (
        MergedPrompt.parse(merged_prompt) if merged_prompt else MergedPrompt((Field(merged_column_name),))
    )
    missing = [c for c in prompt.columns + [output_column_name] if c not in names]
    if missing:
        raise ValueError(
            f"to_sharegpt: column(s) {missing} are not in the dataset (columns: {names}). Fix merged_prompt's "
            "{column} names or output_column_name."
        )
    if not isinstance(conversation_extension, int) or conversation_extension < 1:
        raise ValueError(f"conversation_extension must be an integer >= 1, got {conversation_extension!r}.")

    def merge(row: dict) -> dict:
        return {merged_column_name: prompt.render(row)}

    merged = map_rows(
        dataset, merge, remove_columns=[merged_column_name] if merged_column_name in names else ()
    )
    prompts = column(merged, merged_column_name)
    outputs = ["" if v is None else str(v) for v in column(merged, output_column_name)]
    turns = [
        [{"from": "human", "value": p}, {"from": "gpt", "value": o}]
        for p, o in zip(prompts, outputs, strict=True)
    ]
    rng = random.Random(random_state)
    orders = []
    for _ in range(conversation_extension - 1):
        order = list(range(len(turns)))
        rng.shuffle(order)
        orders.append(order)
    conversations = [turns[i] + [m for order in orders for m in turns[order[i]]] for i in range(len(turns))]
    if remove_unused_columns:
        return from_columns(dataset, {"conversations": conversations})
    cols = {name: column(merged, name) for name in column_names(merged) if name != "conversations"}
    cols["conversations"] = conversations
    return from_columns(dataset, cols)
