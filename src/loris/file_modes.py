"""Files and folders loris writes get the mode a plain ``open()`` / ``mkdir()`` would give them.

That is 0o666 / 0o777 less the process umask. Some writers ignore the umask: ``tempfile`` makes
0o700 folders and 0o600 files, and safetensors' ``save_file`` writes 0o600, and a rename keeps the
mode. Left alone, exports would be readable by their owner only (no other user, container or web
server could read them), so every atomic writer calls `as_if_created_tree` before it renames a
finished temp folder or file into place.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the OS shows it (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_if_created(path: str | os.PathLike) -> Path:
    """Give ``path`` the mode a plain ``mkdir()`` (folder) or ``open()`` (file) would have given it."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())
    return path


def as_if_created_tree(root: str | os.PathLike) -> Path:
    """`as_if_created` for ``root`` and everything under it (symlinks are left alone)."""
    root = Path(root)
    mask = current_umask()
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return root
