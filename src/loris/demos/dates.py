"""The SFT demo's task: rewrite a date given in one of many styles as ISO 8601 (YYYY-MM-DD).

Every style is unambiguous (no 03/05/2021), so each prompt has exactly one right answer and the
score is an exact string match. Rows are generated from a seed, so splits are reproducible.
"""

from __future__ import annotations

import datetime as dt
import random

INSTRUCTION = "Rewrite this date in ISO 8601 format (YYYY-MM-DD). Answer with the date only."
MONTHS = [dt.date(2000, m, 1).strftime("%B") for m in range(1, 13)]


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


STYLES = (
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {_ordinal(d.day)}, {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",
    lambda d: f"{d.day}-{MONTHS[d.month - 1][:3]}-{d.year}",
    lambda d: f"{d.strftime('%A')}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.year}/{d.month}/{d.day}",
    lambda d: f"{MONTHS[d.month - 1].upper()} {d.day} {d.year}",
)


def random_date(rng: random.Random) -> dt.date:
    start = dt.date(1950, 1, 1).toordinal()
    return dt.date.fromordinal(rng.randrange(start, dt.date(2039, 12, 31).toordinal()))


def make_split(n: int, seed: int) -> list[dict]:
    """``n`` rows of {"question", "answer", "messages"} (a user turn and the assistant's answer)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        d = random_date(rng)
        question = f"{INSTRUCTION}\nDate: {rng.choice(STYLES)(d)}"
        answer = d.isoformat()
        rows.append(
            {
                "question": question,
                "answer": answer,
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            }
        )
    return rows


def is_correct(prediction: str, answer: str) -> bool:
    """Exact match on the first non-empty line of the model's reply."""
    lines = [ln.strip() for ln in prediction.strip().splitlines() if ln.strip()]
    return bool(lines) and lines[0] == answer
