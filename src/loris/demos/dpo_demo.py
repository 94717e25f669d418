"""`loris demo dpo`: SmolLM2-135M-Instruct learns, by DPO, to answer small sums inside <answer> tags.

Asked "What is 3 + 4?" with no instruction about the format, the 135M model answers in prose
("3 + 4 = 7", "The answer is 7."), almost never with tags. Each training pair holds the tagged
answer ``<answer>7</answer>`` as *chosen* and the base model's own greedy answer as *rejected*
(so the preference pushes away from what the model actually does, as on-policy DPO data would),
or a plain "7" when its own answer happened to be the tagged one. The score is automatic: on 24
held-out sums never trained on, the share of greedy answers in the tag format, and the share that
also hold the right sum (the GRPO demo's rewards: 0.5 for the tags, 0.5 for an integer inside,
2.0 for the right one). The DPO margins (``rewards/margins``) and accuracies go to
``<output-dir>/log.jsonl``; the loss curve to ``loss.png``.

Sized for a few minutes on 2 CPU cores, busy ones included: answers are cut at 9 new tokens (a
tagged two-digit sum is 8), the held-out "before" answers and the rejected answers come from one
batched greedy generation, no activation checkpointing on CPU (nothing to save at 50 tokens a
sequence, and it would run every forward twice), and on a CPU that other processes keep busy torch
runs on the cores left free (`loris.demos.common.cpu_threads`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loris.demos.common import cpu_threads, load_with_lora, settings_from_args
from loris.demos.sums import MAX_REWARD, TAG, Score, score, split_sums


def question(a: int, b: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {a} + {b}?"}]


@dataclass
class DPODemoSettings:
    model: str
    output_dir: str = "loris-demo-dpo"
    max_steps: int = 12
    batch_pairs: int = 4
    learning_rate: float = 5e-4
    beta: float = 0.1
    lora_r: int = 16
    eval_questions: int = 24
    answer_tokens: int = 9
    seed: int = 3407

    @classmethod
    def quick(cls, model: str, output_dir: str) -> DPODemoSettings:
        """Every stage in a few seconds (the score need not move)."""
        return cls(model, output_dir, max_steps=2, batch_pairs=2, eval_questions=2, answer_tokens=6)


def greedy_answers(model, tok, pairs: list[tuple[int, int]], max_tokens: int) -> list[str]:
    from loris.generation.params import SamplingParams

    prompts = [
        tok.apply_chat_template(question(a, b), tokenize=False, add_generation_prompt=True) for a, b in pairs
    ]
    out = model.fast_generate(
        prompts, SamplingParams(temperature=0, max_tokens=max_tokens), lora_request="live"
    )
    return [o.outputs[0].text.strip() for o in out]


def preference_rows(pairs: list[tuple[int, int]], own: list[str]) -> list[dict]:
    """Chosen: the tagged sum; rejected: the model's own answer (a bare number when that was tagged)."""
    rows = []
    for (a, b), mine in zip(pairs, own, strict=True):
        chosen = f"<answer>{a + b}</answer>"
        rejected = mine if (mine and not TAG.search(mine)) else str(a + b)
        rows.append(
            {
                "prompt": question(a, b),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return rows


def _line(name: str, s: Score) -> str:
    return (
        f"{name}: tagged {s.formatted:.0%}, correct {s.correct:.0%}, reward {s.reward:.2f}/{MAX_REWARD:.0f}"
    )


def run(s: DPODemoSettings) -> dict:
    with cpu_threads("cuda" if torch.cuda.is_available() else "cpu"):
        return _run(s)


def _run(s: DPODemoSettings) -> dict:
    from loris import DPOConfig, DPOTrainer

    t_start = time.perf_counter()
    out = Path(s.output_dir)
    model, tok = load_with_lora(s.model, s.lora_r, s.seed)
    train_pairs, held_out = split_sums(s.seed, s.eval_questions)
    if s.max_steps * s.batch_pairs < len(train_pairs):
        train_pairs = train_pairs[: max(s.max_steps * s.batch_pairs, s.batch_pairs)]
    answers = [str(a + b) for a, b in held_out]
    # one batched generation: the held-out answers before training, and the rejected answers
    texts = greedy_answers(model, tok, held_out + train_pairs, s.answer_tokens)
    before, own = score(texts[: len(held_out)], answers), texts[len(held_out) :]
    print(_line(f"before DPO ({len(held_out)} held-out sums)", before), flush=True)
    rows = preference_rows(train_pairs, own)
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=s.batch_pairs,
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        lr_scheduler_type="constant",
        beta=s.beta,
        logging_steps=1,
        save_strategy="no",
        optim="adamw_torch",
        max_length=128,
        seed=s.seed,
        bf16=model.dtype == torch.bfloat16,
        report_to="none",
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=rows, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    after = score(greedy_answers(model, tok, held_out, s.answer_tokens), answers)
    total = time.perf_counter() - t_start
    print()
    print(_line("before DPO", before))
    print(_line("after DPO ", after))
    last = trainer.state.log_history[-1]
    print(
        f"held-out answers in the preferred format: {before.formatted:.0%} -> {after.formatted:.0%} "
        f"({s.max_steps} steps of {s.batch_pairs} pairs, training {seconds:.0f}s, total {total:.0f}s; "
        f"last step's rewards/margins {last.get('rewards/margins', float('nan')):.2f})"
    )
    for (a, b), x, y in list(zip(held_out, before.texts, after.texts, strict=True))[:4]:
        print(f"  {a} + {b}: before {x[:40]!r} | after {y[:40]!r}")
    return {
        "before": before.formatted,
        "after": after.formatted,
        "before_correct": before.correct,
        "after_correct": after.correct,
        "seconds": seconds,
        "total_seconds": total,
        "margins": [e["rewards/margins"] for e in trainer.state.log_history if "rewards/margins" in e],
    }


def run_dpo_demo(args: argparse.Namespace) -> int:
    """Entry point for `loris demo dpo` (arguments from loris.cli: model, output_dir, max_steps, quick)."""
    run(settings_from_args(DPODemoSettings, args, "loris-demo-dpo"))
    return 0
