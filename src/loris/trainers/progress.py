"""The training progress bar: tqdm with loss, learning rate, tokens/s and ETA.

Shown only on an interactive terminal (log files and CI get the plain log lines instead) and never
with ``disable_tqdm=True``. It writes to stderr, so the log lines on stdout stay machine-readable.
"""

from __future__ import annotations

import sys
from typing import Any


def wants_bar(disable_tqdm: bool, stream: Any = None) -> bool:
    """A bar only makes sense on a TTY; redirected output would fill with carriage returns."""
    if disable_tqdm:
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """Optimizer steps done out of ``total``; ``update`` adds one step and refreshes the postfix.

    A no-op object when disabled, so the loop calls it unconditionally.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, loss: float, learning_rate: float, tokens_per_second: float) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix(
            loss=f"{loss:.4f}", lr=f"{learning_rate:.2e}", tok_s=f"{tokens_per_second:,.0f}", refresh=False
        )
        self._bar.update(1)

    def write(self, text: str) -> None:
        """Print a line above the bar (or plainly when there is no bar)."""
        if self._bar is None:
            print(text)
        else:
            self._bar.write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
