"""The loss curve written to ``output_dir/loss.png`` at the end of training.

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``): nothing global changes —
no backend switch, no open figure left behind — so it is safe inside notebooks and servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOSS_PLOT = "loss.png"


def loss_points(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the log entries that have ``key``."""
    pairs = [(int(e["step"]), float(e[key])) for e in log_history if key in e and "step" in e]
    return [s for s, _ in pairs], [v for _, v in pairs]


def write_loss_plot(log_history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Plot training (and eval) loss against the optimizer step; returns the path, or None with no points."""
    steps, losses = loss_points(log_history, "loss")
    eval_steps, eval_losses = loss_points(log_history, "eval_loss")
    if not steps and not eval_steps:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if steps:
        ax.plot(steps, losses, marker="." if len(steps) < 50 else None, label="train loss")
    if eval_steps:
        ax.plot(eval_steps, eval_losses, marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per token)")
    ax.set_title(title or "training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
