"""The "what is a + b?" task that `loris demo grpo` and `loris demo dpo` both score: the held-out
split of the sums of two digits, and the automatic rewards (TRL's reward-function signature, so
GRPO trains on them as they are) with the held-out score built from them."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
MAX_REWARD = 3.0


def split_sums(
    seed: int, held_out: int = 24, low: int = 1, high: int = 9, shown: tuple[int, int] | None = None
):
    """All pairs (a, b) from [low, high]², shuffled, cut into (training pairs, held-out pairs).

    The held-out sums are never trained on; ``shown`` (a prompt's worked example) is never held
    out: it is taken out before the cut and leads the training pairs."""
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    random.Random(seed).shuffle(pairs)
    if shown is None:
        return pairs[held_out:], pairs[:held_out]
    pairs.remove(shown)
    return [shown, *pairs[held_out:]], pairs[:held_out]


def _text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def format_reward(prompts, completions, **_) -> list[float]:
    """0.5 for both tags, +0.5 when the (first) tag holds only an integer."""
    out = []
    for c in completions:
        t = _text(c)
        r = 0.5 if ("<answer>" in t and "</answer>" in t) else 0.0
        m = TAG.search(t)
        if m and re.fullmatch(r"-?\d+", m.group(1)):
            r += 0.5
        out.append(r)
    return out


def correct_reward(prompts, completions, answer, **_) -> list[float]:
    """2.0 when the (first) tag holds exactly the expected answer."""
    out = []
    for c, want in zip(completions, answer, strict=True):
        m = TAG.search(_text(c))
        out.append(2.0 if m and m.group(1) == want else 0.0)
    return out


@dataclass
class Score:
    """Held-out score: mean total reward, and the share of answers formatted / correct."""

    reward: float
    formatted: float  # both tags around an integer
    correct: float  # the right sum in the tags
    texts: list[str]


def score(texts: list[str], answers: list[str]) -> Score:
    fmt = format_reward(None, texts)
    cor = correct_reward(None, texts, answers)
    n = max(len(texts), 1)
    return Score(
        reward=sum(f + c for f, c in zip(fmt, cor, strict=True)) / n,
        formatted=sum(f == 1.0 for f in fmt) / n,
        correct=sum(c > 0 for c in cor) / n,
        texts=texts,
    )
