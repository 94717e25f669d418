"""`loris demo grpo`: SmolLM2-135M-Instruct learns, by GRPO, to answer sums inside <answer> tags.

The reward is verifiable: 0.25 for each of the two tags, 0.5 when the tag holds only an integer,
and 2.0 when that integer is the right sum. Before and after training the same held-out questions
are answered greedily and scored with the same reward; the reward curve goes to
``<output-dir>/reward.png``.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)


def _question(a: int, b: int) -> list[dict[str, str]]:
    text = f"What is {a} + {b}? Reply with only the number inside <answer></answer> tags, e.g. <answer>9</answer>."
    return [{"role": "user", "content": text}]


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        rows.append({"prompt": _question(a, b), "answer": str(a + b)})
    return rows


def _text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def format_reward(prompts, completions, **_) -> list[float]:
    out = []
    for c in completions:
        t = _text(c)
        r = 0.25 * ("<answer>" in t) + 0.25 * ("</answer>" in t)
        m = TAG.search(t)
        if m and re.fullmatch(r"-?\d+", m.group(1)):
            r += 0.5
        out.append(r)
    return out


def correct_reward(prompts, completions, answer, **_) -> list[float]:
    out = []
    for c, want in zip(completions, answer, strict=True):
        m = TAG.search(_text(c))
        out.append(2.0 if m and m.group(1) == want else 0.0)
    return out


@dataclass
class GRPODemoSettings:
    model: str
    output_dir: str = "loris-demo-grpo"
    max_steps: int = 30
    num_generations: int = 8
    max_completion_length: int = 16
    learning_rate: float = 2e-4
    eval_questions: int = 16
    eval_tokens: int = 24
    lora_r: int = 16
    seed: int = 3407

    @classmethod
    def quick(cls, model: str, output_dir: str) -> GRPODemoSettings:
        return cls(
            model, output_dir, max_steps=2, num_generations=4, max_completion_length=6, eval_questions=2
        )


def evaluate(model, tok, rows, max_tokens: int = 24) -> tuple[float, list[str]]:
    from loris.generation.params import SamplingParams

    prompts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    outs = model.fast_generate(
        prompts, SamplingParams(temperature=0, max_tokens=max_tokens), lora_request="live"
    )
    texts = [o.outputs[0].text for o in outs]
    answers = [r["answer"] for r in rows]
    total = [
        f + c for f, c in zip(format_reward(None, texts), correct_reward(None, texts, answers), strict=True)
    ]
    return sum(total) / len(total), texts


def run(s: GRPODemoSettings) -> dict:
    from loris import FastLanguageModel, GRPOConfig, GRPOTrainer

    out = Path(s.output_dir)
    print(f"loading {Path(s.model).name} ...", flush=True)
    model, tok = FastLanguageModel.from_pretrained(s.model, load_in_4bit=False, max_seq_length=256)
    train_rows = make_rows(max(64, s.max_steps), s.seed)
    eval_rows = make_rows(s.eval_questions, s.seed + 1)
    model = FastLanguageModel.get_peft_model(
        model,
        r=s.lora_r,
        lora_alpha=2 * s.lora_r,
        use_gradient_checkpointing=model.device.type == "cuda",
        random_state=s.seed,
    )
    before, before_texts = evaluate(model, tok, eval_rows, s.eval_tokens)
    print(f"held-out reward before training: {before:.3f} (max 3.0, {len(eval_rows)} questions)", flush=True)
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=s.num_generations,
        num_generations=s.num_generations,
        max_completion_length=s.max_completion_length,
        max_steps=s.max_steps,
        learning_rate=s.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        optim="adamw_torch",
        loss_type="dapo",
        beta=0.0,
        temperature=1.0,
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
    after, after_texts = evaluate(model, tok, eval_rows, s.eval_tokens)
    print(
        f"\nheld-out reward: {before:.3f} before -> {after:.3f} after ({s.max_steps} steps, {seconds:.0f}s)"
    )
    for r, b, a in list(zip(eval_rows, before_texts, after_texts, strict=True))[:4]:
        print(f"  expected {r['answer']:>3}: before {b.strip()[:40]!r} | after {a.strip()[:40]!r}")
    curve = out / "reward.png"
    print(f"reward curve: {curve if curve.is_file() else 'not drawn (matplotlib missing)'}")
    train_rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    return {"before": before, "after": after, "train_rewards": train_rewards, "seconds": seconds}


def run_grpo_demo(args: argparse.Namespace) -> int:
    """Entry point for `loris demo grpo` (arguments from loris.cli: model, output_dir, max_steps, quick)."""
    from loris.cli import smollm2_gguf_path

    model = args.model or str(smollm2_gguf_path())
    output_dir = args.output_dir if args.output_dir != "loris-demo" else "loris-demo-grpo"
    if args.quick:
        settings = GRPODemoSettings.quick(model, output_dir)
    else:
        settings = GRPODemoSettings(model, output_dir)
        if args.max_steps:
            settings.max_steps = args.max_steps
    run(settings)
    return 0
