"""Write-then-rename helpers so an interrupted export never leaves a half-written model in place.

What is renamed into place has the mode a plain ``mkdir()`` / ``open()`` would give
(`loris.file_modes`: tempfile and safetensors write owner-only, and a rename keeps the mode).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from loris.file_modes import as_if_created, as_if_created_tree


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh temp folder beside ``out`` (same filesystem, so renames are atomic); removed on error.

    It has the mode a plain ``mkdir`` would give, so the published folder does too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = as_if_created(Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-")))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, out: Path, stale: Iterable[str] = ()) -> Path:
    """Move a finished staging folder to ``out``.

    A new ``out`` is one rename. An existing ``out`` keeps files we did not write, loses files
    matching the ``stale`` globs (old shards that a new index no longer names) and gets each new
    file by an atomic per-file rename.
    """
    as_if_created_tree(tmp)
    if not out.exists():
        os.replace(tmp, out)
        return out
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; pass a folder path to save into.")
    new = {p.name for p in tmp.iterdir()}
    for pattern in stale:
        for old in out.glob(pattern):
            if old.name not in new and old.is_file():
                old.unlink()
    for p in tmp.iterdir():
        target = out / p.name
        if p.is_dir():
            if target.exists():
                shutil.rmtree(target)
            os.replace(p, target)
        else:
            os.replace(p, target)
    tmp.rmdir()
    return out


def temp_file_for(path: Path) -> Path:
    """A temp name beside ``path`` to write to and then `os.replace` into place (with the mode a plain
    ``open()`` would give, which the rename keeps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return as_if_created(Path(name))
