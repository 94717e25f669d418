"""Small offline stand-ins for the Hub datasets the Unsloth notebooks load (examples/notebooks/).

Each function returns plain rows with the columns of the dataset it replaces, so the notebooks'
own formatting code runs unchanged on them. The contents are generated here (arithmetic with
exact answers, short factual chats), not copied from the real datasets.
"""

from __future__ import annotations

import random

__all__ = [
    "alpaca_gpt4_sample",
    "alpaca_preference_sample",
    "dapo_math_sample",
    "finetome_sample",
    "gsm8k_sample",
    "open_math_reasoning_sample",
    "ultrafeedback_sample",
]

_ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "shells"]
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay"]
_FACTS = [
    ("What colour is a clear daytime sky?", "A clear daytime sky is blue."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What do bees make?", "Bees make honey."),
    ("How many days are in a week?", "There are seven days in a week."),
]


def gsm8k_sample(n: int = 16, seed: int = 3407) -> list[dict]:
    """openai/gsm8k ("main"): ``question`` and ``answer`` (working, then ``#### <number>``)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b, c = rng.randint(3, 20), rng.randint(2, 9), rng.randint(1, 5)
        total = a + b - c
        rows.append(
            {
                "question": f"{name} has {a} {item}, buys {b} more and gives {c} away. How many {item} "
                f"does {name} have now?",
                "answer": f"{name} has {a} + {b} = {a + b} {item} after buying.\n"
                f"After giving {c} away: {a + b} - {c} = {total}.\n#### {total}",
            }
        )
    return rows


def open_math_reasoning_sample(n: int = 12, seed: int = 3407) -> list[dict]:
    """unsloth/OpenMathReasoning-mini ("cot"): ``problem``, ``generated_solution`` (a <think> block,
    then the answer) and ``expected_answer``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        rows.append(
            {
                "problem": f"Compute {a} * {b} + {a}.",
                "generated_solution": f"<think>\nFirst {a} * {b} = {a * b}. Then {a * b} + {a} = {a * b + a}.\n"
                f"</think>\nThe answer is $\\boxed{{{a * b + a}}}$.",
                "expected_answer": str(a * b + a),
            }
        )
    return rows


def finetome_sample(n: int = 12, seed: int = 3407) -> list[dict]:
    """mlabonne/FineTome-100k: ShareGPT ``conversations`` (from/value), ``source`` and ``score``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question, answer = _FACTS[i % len(_FACTS)]
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        if i % 3 == 2:
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            turns += [{"from": "human", "value": f"And what is {a} + {b}?"},
                      {"from": "gpt", "value": f"{a} + {b} = {a + b}."}]  # fmt: skip
        rows.append({"conversations": turns, "source": "loris-sample", "score": 5.0})
    return rows


def alpaca_gpt4_sample(n: int = 16, seed: int = 3407) -> list[dict]:
    """vicgalle/alpaca-gpt4: ``instruction``, ``input`` (often empty), ``output``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            a, b = rng.randint(2, 50), rng.randint(2, 50)
            rows.append({"instruction": "Add the numbers.", "input": f"{a}, {b}", "output": str(a + b)})
        else:
            question, answer = _FACTS[i % len(_FACTS)]
            rows.append({"instruction": question, "input": "", "output": answer})
    return rows


def dapo_math_sample(n: int = 12, seed: int = 3407) -> list[dict]:
    """open-r1/DAPO-Math-17k-Processed ("en"): ``prompt`` (a problem) and ``solution`` (the answer)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 9)
        rows.append({"prompt": f"What is {a} times {b}, minus {b}?", "solution": str(a * b - b)})
    return rows


def ultrafeedback_sample(n: int = 16, seed: int = 3407) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized ("train_prefs"): ``prompt``, ``chosen`` and ``rejected``
    (whole conversations: the user turn, then the answer), ``score_chosen`` and ``score_rejected``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            a, b = rng.randint(2, 50), rng.randint(2, 50)
            prompt, good, bad = f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"{a} + {b} = {a + b + 1}."
        else:
            prompt, good = _FACTS[i % len(_FACTS)]
            bad = "I am not sure."
        user = {"role": "user", "content": prompt}
        rows.append({"prompt": prompt, "chosen": [user, {"role": "assistant", "content": good}],
                     "rejected": [user, {"role": "assistant", "content": bad}],
                     "score_chosen": 9.0, "score_rejected": 3.0})  # fmt: skip
    return rows


def alpaca_preference_sample(n: int = 16, seed: int = 3407) -> list[dict]:
    """An Alpaca-format preference set as the ORPO notebook formats it: ``instruction``, ``input``,
    ``accepted`` (the better answer) and ``rejected``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            a, b = rng.randint(2, 50), rng.randint(2, 50)
            rows.append({"instruction": "Add the numbers.", "input": f"{a}, {b}", "accepted": str(a + b),
                         "rejected": str(a + b - 1)})  # fmt: skip
        else:
            question, answer = _FACTS[i % len(_FACTS)]
            rows.append({"instruction": question, "input": "", "accepted": answer, "rejected": "No idea."})
    return rows
