"""`loris demo`: LoRA-fine-tune SmolLM2-135M-Instruct to write dates as ISO 8601, scored before and after.

Read top to bottom: load → score the base model on held-out dates → add LoRA → train on the answers
only → score again → show answers side by side → save the adapter, a merged model and the loss plot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loris.demos.common import cpu_threads
from loris.demos.dates import is_correct, make_split


@dataclass
class DemoSettings:
    model: str
    output_dir: str = "loris-demo"
    train_examples: int = 480
    eval_examples: int = 60
    max_steps: int = 60
    batch_size: int = 8
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 3407
    save_merged: bool = True

    @classmethod
    def quick(cls, model: str, output_dir: str) -> DemoSettings:
        """A few steps on a few examples: exercises every stage in well under a minute."""
        return cls(model, output_dir, train_examples=16, eval_examples=4, max_steps=2, batch_size=4)


def _prompt_text(tok, question: str) -> str:
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def tokenize_for_training(tok, rows: list[dict]) -> list[dict]:
    """input_ids of the whole chat; labels only on the assistant's answer and its end-of-turn tokens."""
    out = []
    for row in rows:
        prompt_ids = tok(_prompt_text(tok, row["question"]), add_special_tokens=False).input_ids
        full_ids = tok(
            tok.apply_chat_template(row["messages"], tokenize=False), add_special_tokens=False
        ).input_ids
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the chat template renders the prompt differently inside the full chat")
        labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        out.append({"input_ids": full_ids, "labels": labels})
    return out


@torch.no_grad()
def answer(model, tok, questions: list[str], max_new_tokens: int = 16, batch_size: int = 32) -> list[str]:
    """Greedy answers, batched with left padding."""
    from loris import FastLanguageModel

    FastLanguageModel.for_inference(model)
    replies = []
    for i in range(0, len(questions), batch_size):
        texts = [_prompt_text(tok, q) for q in questions[i : i + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=max_new_tokens)
        replies += tok.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return replies


def score(model, tok, rows: list[dict]) -> tuple[float, list[str]]:
    replies = answer(model, tok, [r["question"] for r in rows])
    return sum(is_correct(p, r["answer"]) for p, r in zip(replies, rows, strict=True)) / len(rows), replies


def run(settings: DemoSettings) -> dict:
    """The demo, on the CPU cores other processes leave free (`loris.demos.common.cpu_threads`)."""
    with cpu_threads("cuda" if torch.cuda.is_available() else "cpu"):
        return _run(settings)


def _run(settings: DemoSettings) -> dict:
    from loris import FastLanguageModel, SFTConfig, SFTTrainer

    t_start = time.perf_counter()
    out = Path(settings.output_dir)
    print(f"loading {Path(settings.model).name} ...", flush=True)
    model, tok = FastLanguageModel.from_pretrained(settings.model, load_in_4bit=False, max_seq_length=256)
    device = model.device
    print(f"  {model.num_parameters() / 1e6:.0f}M parameters on {device} ({model.dtype})", flush=True)

    train_rows = make_split(settings.train_examples, seed=settings.seed)
    eval_rows = make_split(settings.eval_examples, seed=settings.seed + 1)
    before, before_replies = score(model, tok, eval_rows)
    print(f"held-out exact match before training: {before:.1%} ({len(eval_rows)} dates)", flush=True)

    model = FastLanguageModel.get_peft_model(
        model,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        use_gradient_checkpointing=device.type == "cuda",  # CPU has memory to spare: no recompute
        random_state=settings.seed,
    )
    FastLanguageModel.for_training(model)
    args = SFTConfig(
        output_dir=str(out),  # save_strategy="no": no checkpoints, only loss.png and the log land here
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=max(1, settings.max_steps // 10),
        logging_steps=max(1, settings.max_steps // 10),
        save_strategy="no",
        optim="adamw_torch",
        seed=settings.seed,
        bf16=model.dtype == torch.bfloat16,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model, processing_class=tok, train_dataset=tokenize_for_training(tok, train_rows), args=args
    )
    (out / "log.jsonl").unlink(missing_ok=True)  # the trainer appends (for resuming): start this run's afresh
    t_train = time.perf_counter()
    stats = trainer.train()
    train_s = time.perf_counter() - t_train

    after, after_replies = score(model, tok, eval_rows)
    print(
        f"\nheld-out exact match: {before:.1%} before → {after:.1%} after ({settings.max_steps} steps, {train_s:.0f}s)"
    )
    print("\nsome held-out answers:")
    for line in answer_table(eval_rows, before_replies, after_replies):
        print("  " + line)

    model.save_pretrained(out / "adapter", tokenizer=tok)
    saved = [str(out / "adapter")]
    if settings.save_merged:
        model.save_pretrained_merged(str(out / "merged"), tok, save_method="merged_16bit")
        saved.append(str(out / "merged"))
    plot = _loss_plot(trainer, out / "loss.png")
    if plot:
        saved.append(str(plot))
    total_s = time.perf_counter() - t_start
    print(f"\nsaved: {', '.join(saved)}\ntotal time {total_s:.0f}s")
    return {
        "before": before,
        "after": after,
        "train_seconds": train_s,
        "total_seconds": total_s,
        "steps": settings.max_steps,
        "final_loss": getattr(stats, "training_loss", None),
        "device": str(device),
    }


def answer_table(rows: list[dict], before: list[str], after: list[str], n: int = 5) -> list[str]:
    """A header and ``n`` rows: the date asked about, the answer before and after training, the truth."""
    widths = (34, 28, 20)
    lines = [
        "".join(h.ljust(w) for h, w in zip(("date", "before", "after"), widths, strict=True)) + "expected"
    ]
    for row, b, a in list(zip(rows, before, after, strict=True))[:n]:
        date = row["question"].rsplit("Date: ", 1)[1]
        cells = (repr(date), repr(b.strip()[:24]), repr(a.strip()[:16]))
        lines.append(
            "".join(c.ljust(w - 1) + " " for c, w in zip(cells, widths, strict=True)) + row["answer"]
        )
    return lines


def _loss_plot(trainer, path: Path) -> Path | None:
    """The trainer's own loss.png when it wrote one, else a plot from its log history."""
    own = Path(trainer.args.output_dir) / "loss.png"
    history = [h for h in getattr(trainer.state, "log_history", []) if "loss" in h and "step" in h]
    if own.exists():
        if own.resolve() != path.resolve():
            path.write_bytes(own.read_bytes())
        return path
    if not history:
        return None
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loris demo: SmolLM2-135M, dates → ISO 8601")
    fig.tight_layout()
    fig.savefig(path)
    return path
