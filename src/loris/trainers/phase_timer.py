"""Where an optimizer step's time goes: named phases between marks, read back at log time.

A trainer marks the end of each phase (``mark("generation")``: the time since the previous mark
was spent generating). On CUDA a mark records an event on the current stream instead of reading
the host clock, so marking never waits for the GPU; the interval between two events is the GPU
timeline's, which also counts the time the GPU sat idle waiting for the host. Events are turned
into seconds only when `read` is called (at a log line, which already waits for the step's loss),
so the training loop gains no synchronisation. On CPU the host clock is exact and used directly.

GRPO reports these as ``time/<phase>`` in its logs (seconds per optimizer step over the log
window): a rollout-bound step shows it at once.
"""

from __future__ import annotations

import time

import torch

MAX_PENDING = 4096
"""Marks kept unread before the oldest are folded into the totals (a run nobody reads stays small)."""


class PhaseTimer:
    """Seconds per named phase, summed between `read` calls, and the optimizer steps they span."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._last = self._now()
        self._pending: list[tuple[str, object, object]] = []  # (phase, start, end) not yet read
        self._totals: dict[str, float] = {}
        self._steps = 0

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, phase: str, *, ends_step: bool = False) -> None:
        """The time since the previous mark was spent in ``phase``; ``ends_step`` counts a step."""
        now = self._now()
        self._pending.append((phase, self._last, now))
        self._last = now
        self._steps += ends_step
        if len(self._pending) > MAX_PENDING:
            self._fold(len(self._pending) // 2)

    def _fold(self, count: int) -> None:
        for phase, start, end in self._pending[:count]:
            if self.cuda:
                end.synchronize()  # long done for all but the newest marks
                seconds = start.elapsed_time(end) / 1000.0
            else:
                seconds = end - start
            self._totals[phase] = self._totals.get(phase, 0.0) + seconds
        del self._pending[:count]

    def read(self) -> dict[str, float]:
        """``{"time/<phase>": seconds per step}`` since the last read (waits for the newest mark),
        then starts a new window. Empty when no step ended in the window."""
        self._fold(len(self._pending))
        steps, totals = self._steps, self._totals
        self._totals, self._steps = {}, 0
        if steps == 0:
            return {}
        return {f"time/{phase}": seconds / steps for phase, seconds in totals.items()}
