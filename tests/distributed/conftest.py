"""Fixtures for the multi-process tests: helpers importable by the spawned ranks, one CPU thread each."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_TRAINERS = str(Path(__file__).resolve().parent.parent / "trainers")
if _TRAINERS not in sys.path:
    sys.path.insert(0, _TRAINERS)
