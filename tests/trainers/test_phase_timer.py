"""`PhaseTimer` on a fake host clock (CPU path): phases sum per step, windows reset, folding keeps totals."""

from __future__ import annotations

import itertools

import pytest
import torch

from loris.trainers import phase_timer
from loris.trainers.phase_timer import PhaseTimer


@pytest.fixture
def clock(monkeypatch):
    """perf_counter returns 0, 1, 3, 6, 10, ... (the n-th call: n(n+1)/2)."""
    values = itertools.accumulate(itertools.count())
    monkeypatch.setattr(phase_timer.time, "perf_counter", lambda: float(next(values)))


def test_phases_are_seconds_per_step_over_the_window(clock):
    t = PhaseTimer(torch.device("cpu"))  # t=0
    t.mark("generation")  # 1: 1 s
    t.mark("forward_backward")  # 3: 2 s
    t.mark("optimizer", ends_step=True)  # 6: 3 s
    t.mark("generation")  # 10: 4 s
    t.mark("forward_backward")  # 15: 5 s
    t.mark("optimizer", ends_step=True)  # 21: 6 s
    assert t.read() == {"time/generation": 2.5, "time/forward_backward": 3.5, "time/optimizer": 4.5}
    assert t.read() == {}  # a new window, no step ended in it
    t.mark("generation")  # 28: 7 s
    assert t.read() == {}  # still no step: the unfinished step's phases are dropped with the window
    t.mark("optimizer", ends_step=True)  # 36: 8 s
    assert t.read() == {"time/optimizer": 8.0}


def test_folding_old_marks_keeps_the_totals(clock, monkeypatch):
    monkeypatch.setattr(phase_timer, "MAX_PENDING", 3)
    t = PhaseTimer(torch.device("cpu"))
    for _ in range(4):
        t.mark("a")
        t.mark("b", ends_step=True)
    assert len(t._pending) <= 3
    # marks at 1, 3, 6, 10, 15, 21, 28, 36: a = 1+3+5+7, b = 2+4+6+8 over 4 steps
    assert t.read() == {"time/a": 4.0, "time/b": 5.0}
