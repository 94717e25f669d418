"""`loris demo grpo`: SmolLM2-135M-Instruct learns, by GRPO, to answer small sums inside <answer> tags.

The task is one the 135M model can already do now and then, so that the 8 samples of a prompt
differ in reward and GRPO has a signal to follow: the system prompt asks for the answer inside
``<answer></answer>`` and one worked example (a user turn and the assistant's tagged answer) shows
the format. The reward is verifiable and gives partial credit: 0.5 when both tags are there, 0.5
more when the tag holds only an integer, and 2.0 when that integer is the right sum (3.0 at most).

Sums of two digits 1-9 are split once: 24 held-out sums are never trained on. Before and after
training they are scored twice: answered greedily, and sampled at the training temperature (4
samples each: what the policy does, not only its mode). The base model uses the tags in 79% of its
greedy answers but only 34% of its samples, and gets 33% of the held-out sums right (greedy); GRPO
(LoRA r=16, lr 3e-4, beta 0, one prompt x 8 completions per step, 30 steps) raised those to 100%,
94% and 67% in the README's run. The training reward curve goes to ``<output-dir>/reward.png``.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loris.demos import sums
from loris.demos.common import cpu_threads, load_with_lora, settings_from_args
from loris.demos.sums import MAX_REWARD, Score, correct_reward, format_reward, score

SYSTEM = "Answer with the result inside <answer></answer> tags and nothing else."
EXAMPLE = ("What is 2 + 3?", "<answer>5</answer>")


def question(a: int, b: int) -> list[dict[str, str]]:
    """The chat for one sum: system instruction, one worked example, the question."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": EXAMPLE[0]},
        {"role": "assistant", "content": EXAMPLE[1]},
        {"role": "user", "content": f"What is {a} + {b}?"},
    ]


def split_sums(seed: int, held_out: int = 24, low: int = 1, high: int = 9):
    """All pairs (a, b) from [low, high]², shuffled, cut into (training pairs, held-out pairs).

    The held-out sums are never trained on; the worked example's sum is never held out.
    """
    shown = tuple(int(x) for x in EXAMPLE[0][8:-1].split(" + "))
    return sums.split_sums(seed, held_out, low, high, shown=shown)


def make_rows(pairs: list[tuple[int, int]], n: int | None = None, seed: int = 0) -> list[dict]:
    """Rows with a chat ``prompt`` and the ``answer`` column: ``n`` draws from ``pairs`` (with
    replacement), or each pair once in order when ``n`` is None."""
    if n is not None:
        rng = random.Random(seed)
        pairs = [rng.choice(pairs) for _ in range(n)]
    return [{"prompt": question(a, b), "answer": str(a + b)} for a, b in pairs]


@dataclass
class GRPODemoSettings:
    model: str
    output_dir: str = "loris-demo-grpo"
    max_steps: int = 30
    num_generations: int = 8
    prompts_per_step: int = 1
    max_completion_length: int = 10
    temperature: float = 1.0
    learning_rate: float = 3e-4
    beta: float = 0.0
    lora_r: int = 16
    eval_questions: int = 24
    eval_samples: int = 4
    eval_tokens: int = 12
    low: int = 1
    high: int = 9
    seed: int = 3407

    @classmethod
    def quick(cls, model: str, output_dir: str) -> GRPODemoSettings:
        """Every stage in a few seconds of training (the reward need not move)."""
        return cls(model, output_dir, max_steps=2, num_generations=4, eval_questions=2, eval_samples=2)

    @classmethod
    def short(cls, model: str, output_dir: str) -> GRPODemoSettings:
        """The test suite's form: 6 steps at a higher learning rate, 8 held-out sums x 4 samples.

        Measured on the 2-core CPU machine: about 60 s in all; the sampled held-out reward rose
        from 0.34-0.44 to 1.98-2.13 with seeds 3407, 4 and 5 (the greedy reward on only 8 sums is
        too coarse to test on: one seed left it at 2.25).
        """
        return cls(model, output_dir, max_steps=6, learning_rate=5e-4, eval_questions=8, eval_samples=4)


def evaluate(model, tok, rows, s: GRPODemoSettings, seed: int = 0) -> tuple[Score, Score]:
    """(greedy, sampled) held-out scores; sampling uses the training temperature and a fixed seed."""
    from loris.generation.params import SamplingParams

    prompts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    answers = [r["answer"] for r in rows]
    greedy = model.fast_generate(
        prompts, SamplingParams(temperature=0, max_tokens=s.eval_tokens), lora_request="live"
    )
    sampled = model.fast_generate(
        prompts,
        SamplingParams(temperature=s.temperature, max_tokens=s.eval_tokens, n=s.eval_samples, seed=seed),
        lora_request="live",
    )
    g = score([o.outputs[0].text for o in greedy], answers)
    texts = [c.text for o in sampled for c in o.outputs]
    return g, score(texts, [a for a in answers for _ in range(s.eval_samples)])


def _line(name: str, g: Score, sm: Score) -> str:
    return (
        f"{name}: greedy {g.reward:.3f} (formatted {g.formatted:.0%}, correct {g.correct:.0%}) | "
        f"sampled {sm.reward:.3f} (formatted {sm.formatted:.0%}, correct {sm.correct:.0%})"
    )


def run(s: GRPODemoSettings) -> dict:
    """The demo, on the CPU cores other processes leave free (`loris.demos.common.cpu_threads`)."""
    with cpu_threads("cuda" if torch.cuda.is_available() else "cpu"):
        return _run(s)


def _run(s: GRPODemoSettings) -> dict:
    from loris import GRPOConfig, GRPOTrainer

    t_start = time.perf_counter()
    out = Path(s.output_dir)
    model, tok = load_with_lora(s.model, s.lora_r, s.seed)
    train_pairs, held_out = split_sums(s.seed, s.eval_questions, s.low, s.high)
    train_rows = make_rows(train_pairs, max(64, s.max_steps * s.prompts_per_step), s.seed)
    eval_rows = make_rows(held_out)
    n_eval = f"{len(eval_rows)} held-out sums, max {MAX_REWARD}"
    before = evaluate(model, tok, eval_rows, s)
    print(_line(f"reward before training ({n_eval})", *before), flush=True)
    batch = s.num_generations * s.prompts_per_step
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_generations=s.num_generations,
        max_completion_length=s.max_completion_length,
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        optim="adamw_torch",
        loss_type="dapo",
        beta=s.beta,
        temperature=s.temperature,
        seed=s.seed,
        bf16=model.dtype == torch.bfloat16,
        report_to="none",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[format_reward, correct_reward],
        args=args,
        train_dataset=train_rows,
        processing_class=tok,
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    after = evaluate(model, tok, eval_rows, s)
    total = time.perf_counter() - t_start
    print()
    print(_line("reward before", *before))
    print(_line("reward after ", *after))
    print(
        f"held-out reward (greedy): {before[0].reward:.3f} -> {after[0].reward:.3f}; "
        f"sampled: {before[1].reward:.3f} -> {after[1].reward:.3f} "
        f"({s.max_steps} steps of {batch} completions, training {seconds:.0f}s, total {total:.0f}s)"
    )
    for r, b, a in list(zip(eval_rows, before[0].texts, after[0].texts, strict=True))[:4]:
        print(f"  expected {r['answer']:>3}: before {b.strip()[:40]!r} | after {a.strip()[:40]!r}")
    curve = out / "reward.png"
    print(f"reward curve: {curve if curve.is_file() else 'not drawn (matplotlib missing)'}")
    train_rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    return {
        "before": before[0].reward,
        "after": after[0].reward,
        "before_sampled": before[1].reward,
        "after_sampled": after[1].reward,
        "train_rewards": train_rewards,
        "seconds": seconds,
        "total_seconds": total,
    }


def run_grpo_demo(args: argparse.Namespace) -> int:
    """Entry point for `loris demo grpo` (arguments from loris.cli: model, output_dir, max_steps, quick)."""
    run(settings_from_args(GRPODemoSettings, args, "loris-demo-grpo"))
    return 0
