"""The training progress bar: tqdm with steps, ETA, the last step's loss, learning rate and tokens/s.

tokens/s is the whole run so far: every token of every micro-batch since training started (this
run, when resumed), divided by the wall time since then, so it includes data loading, the optimizer
and logging and settles as the run goes on, where a per-step rate jumps with each batch's length and
with whatever else the machine is doing.

On a terminal the bar is tqdm's live one. Where stderr is not a terminal (a log file, CI, a captured
notebook cell) carriage-return redraws would pile up on one line, so the same tqdm line is printed
whole, with a newline: at step 0, then at most every ``every_s`` seconds, and at the end.
``disable_tqdm=True`` turns both off. The bar writes to stderr, so log lines on stdout stay
machine-readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any

LIVE, LINES = "live", "lines"


def bar_mode(disable_tqdm: bool, stream: Any = None) -> str | None:
    """``"live"`` on a terminal, ``"lines"`` elsewhere, None with ``disable_tqdm``."""
    if disable_tqdm:
        return None
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return LIVE if isatty and isatty() else LINES


class _Discard:
    """A file that drops what tqdm draws: in "lines" mode the bar is printed whole, by us."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class ProgressBar:
    """Optimizer steps done out of ``total``; ``update`` adds one step and refreshes the postfix.

    A no-op object when ``mode`` is None, so the loop calls it unconditionally.
    """

    def __init__(
        self, total: int, initial: int = 0, mode: str | None = LIVE, every_s: float = 30.0, stream: Any = None
    ) -> None:
        self._bar = None
        self._mode = mode
        self._stream = stream
        self._every_s = every_s
        self._start = self._printed = time.perf_counter()
        self._tokens = 0
        if mode is None:
            return
        from tqdm.auto import tqdm

        kw: dict[str, Any] = {"desc": "train", "unit": "step"}
        if mode == LIVE:
            kw.update(dynamic_ncols=True, file=stream)
        else:
            kw.update(ncols=100, file=_Discard(), mininterval=0)
        self._bar = tqdm(total=total, initial=initial, **kw)
        self._print_line()  # step 0: the bar is there before the first (slow) step ends

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    @property
    def tokens_per_second(self) -> float:
        """Tokens of every step so far / wall seconds since training started."""
        return self._tokens / max(time.perf_counter() - self._start, 1e-9)

    def update(self, loss: float, learning_rate: float, tokens: int) -> None:
        """One optimizer step: its loss, learning rate and the number of tokens it trained on."""
        self._tokens += int(tokens)
        if self._bar is None:
            return
        self._bar.set_postfix(
            loss=f"{loss:.4f}",
            lr=f"{learning_rate:.2e}",
            tok_s=f"{self.tokens_per_second:,.0f}",
            refresh=False,
        )
        self._bar.update(1)
        last = self._bar.total is not None and self._bar.n >= self._bar.total
        if last or time.perf_counter() - self._printed >= self._every_s:
            self._print_line()

    def _print_line(self) -> None:
        if self._mode != LINES or self._bar is None:
            return
        print(str(self._bar), file=self._stream or sys.stderr, flush=True)
        self._printed = time.perf_counter()

    def write(self, text: str) -> None:
        """Print a line above the live bar (or plainly on stdout otherwise)."""
        if self._mode == LIVE and self._bar is not None:
            self._bar.write(text)
        else:
            print(text)

    def close(self) -> None:
        if self._bar is not None:
            if self._bar.total is not None and self._bar.n < self._bar.total:
                self._print_line()  # stopped early: say where
            self._bar.close()
            self._bar = None
