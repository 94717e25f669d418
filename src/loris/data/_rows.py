"""Treat a ``datasets.Dataset`` and a plain list of dicts alike for the row-wise helpers here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Rows = Any  # datasets.Dataset | list[dict]


def is_hf_dataset(data: Any) -> bool:
    """True for ``datasets.Dataset`` without importing ``datasets`` when the caller never did."""
    return type(data).__module__.startswith("datasets.") and hasattr(data, "column_names")


def column_names(data: Rows, limit: int | None = None) -> list[str]:
    """Column names of a Dataset, or the union of keys of a list of dicts (first-seen order; of
    its first ``limit`` rows when given)."""
    if is_hf_dataset(data):
        return list(data.column_names)
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise TypeError(f"Expected a datasets.Dataset or a list of dicts, got {type(data).__name__}.")
    names: dict[str, None] = {}
    for row in data if limit is None else data[:limit]:
        if not isinstance(row, dict):
            raise TypeError(f"Expected a list of dicts, found a {type(row).__name__} row.")
        names.update(dict.fromkeys(row))
    return list(names)


def column(data: Rows, name: str) -> list[Any]:
    if is_hf_dataset(data):
        return list(data[name])
    return [row.get(name) for row in data]


def head(data: Rows, name: str, n: int) -> list[Any]:
    """The first ``n`` values of a column, without materialising the rest."""
    if is_hf_dataset(data):
        return list(data[:n][name])
    return [row.get(name) for row in data[:n]]


def map_rows(
    data: Rows, fn: Callable[[dict], dict], remove_columns: Sequence[str] = (), **map_kwargs: Any
) -> Rows:
    """Apply ``fn(row) -> new columns`` to every row, then drop ``remove_columns`` (unless fn rewrote them)."""
    if is_hf_dataset(data):
        return data.map(fn, remove_columns=list(remove_columns) or None, **map_kwargs)
    out = []
    for row in data:
        new = {k: v for k, v in row.items() if k not in remove_columns}
        new.update(fn(row))
        out.append(new)
    return out


def filter_rows(data: Rows, keep: Sequence[bool]) -> Rows:
    if is_hf_dataset(data):
        return data.select([i for i, k in enumerate(keep) if k])
    return [row for row, k in zip(data, keep, strict=True) if k]


def from_columns(like: Rows, columns: dict[str, list[Any]]) -> Rows:
    """Build rows of the same kind as ``like`` (Dataset or list) from column lists."""
    if is_hf_dataset(like):
        return type(like).from_dict(columns)
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    return [{k: columns[k][i] for k in names} for i in range(n)]


def from_rows(like: Rows, rows: list[dict]) -> Rows:
    """Rows of the same kind as ``like`` (Dataset or list) from a list of dicts."""
    if is_hf_dataset(like):
        return type(like).from_list(rows)
    return rows
