"""What the user sees around the loop: TrainOutput, the progress bar, loss.png, the NaN stop keeping the
last good checkpoint, gradient_checkpointing from the config, empty/over-long data, packing exactness,
and Unsloth's trainer names."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
from trainer_testing import Record, token_rows

from loris import SFTConfig, SFTTrainer
from loris.trainers import TrainerCallback, TrainingDivergedError
from loris.trainers.checkpoint import list_checkpoints
from loris.trainers.progress import ProgressBar, bar_mode


def config(tmp_path, **kw) -> SFTConfig:
    base = dict(output_dir=str(tmp_path), logging_steps=1, save_strategy="no", disable_tqdm=True)
    return SFTConfig(**{**base, **kw})


# ------------------------------------------------------------------------- TrainOutput and loss.png
def test_train_returns_trl_stats_and_writes_the_loss_plot(load_tiny, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    model, tok = load_tiny()
    rec = Record()
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3)
    out = SFTTrainer(model, cfg, train_dataset=token_rows([4, 6, 5, 7]), processing_class=tok,
                     callbacks=[rec]).train()  # fmt: skip
    assert out.global_step == 3
    assert set(out.metrics) >= {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "epoch",
    }
    losses = [rec.steps[s]["loss"] for s in (1, 2, 3)]
    assert out.training_loss == pytest.approx(sum(losses) / 3) == out.metrics["train_loss"]
    assert out.metrics["epoch"] == pytest.approx(1.5)  # 2 micro-batches per epoch, 3 steps
    assert out.metrics["train_samples_per_second"] == pytest.approx(
        out.metrics["train_steps_per_second"] * 2, rel=1e-9
    )
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert matplotlib.get_backend() == backend  # no global state changed
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


# ------------------------------------------------------------------------------------ progress bar
class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_live_on_a_terminal_lines_elsewhere_none_when_disabled():
    assert bar_mode(False, _Stream(True)) == "live"
    assert bar_mode(True, _Stream(True)) is None and bar_mode(True, _Stream(False)) is None
    assert bar_mode(False, _Stream(False)) == "lines"
    assert bar_mode(False, object()) == "lines"
    bar = ProgressBar(5, mode=None)
    bar.update(1.0, 1e-3, 10)  # a no-op when disabled
    assert not bar.enabled


def test_progress_bar_tokens_per_second_is_the_whole_run_so_far(monkeypatch):
    import loris.trainers.progress as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bar = ProgressBar(3, mode=None)  # starts at t=100
    now[0] = 102.0
    bar.update(2.0, 1e-3, 400)  # 400 tokens in 2 s
    assert bar.tokens_per_second == pytest.approx(200.0)
    now[0] = 104.0
    bar.update(2.0, 1e-3, 100)  # a short batch: 500 tokens in 4 s, not 100 in the last 2 s
    assert bar.tokens_per_second == pytest.approx(125.0)
    now[0] = 110.0
    bar.update(2.0, 1e-3, 700)
    assert bar.tokens_per_second == pytest.approx(1200 / 10)


def _train_with_bar(load_tiny, tmp_path, max_steps=2, **kw):
    model, tok = load_tiny()
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=max_steps, disable_tqdm=False, **kw)
    SFTTrainer(model, cfg, train_dataset=token_rows([4, 6, 5, 7]), processing_class=tok).train()


def test_progress_bar_on_a_terminal_shows_steps_eta_loss_lr_tokens_per_second(
    load_tiny, tmp_path, monkeypatch, capsys
):
    import loris.trainers.loop as loop

    monkeypatch.setattr(loop, "bar_mode", lambda disable, stream=None: None if disable else "live")
    _train_with_bar(load_tiny, tmp_path)
    err = capsys.readouterr().err
    assert "0/2 [" in err and "2/2 [" in err  # drawn at step 0, before the first step ends
    assert "<" in err and "loss=" in err and "lr=" in err and "tok_s=" in err  # elapsed<ETA
    capsys.readouterr()
    model, tok = load_tiny()
    cfg = config(tmp_path / "quiet", per_device_train_batch_size=2, max_steps=1, disable_tqdm=True)
    SFTTrainer(model, cfg, train_dataset=token_rows([4, 6]), processing_class=tok).train()
    captured = capsys.readouterr()
    assert "tok_s=" not in captured.err and "'loss'" in captured.out


def test_progress_bar_in_a_log_file_prints_whole_lines(load_tiny, tmp_path, capsys):
    """stderr is not a terminal under pytest: the tqdm line is printed whole at step 0 and at the end."""
    _train_with_bar(load_tiny, tmp_path, max_steps=3)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train:")]
    assert "\r" not in "".join(lines)
    assert "0/3 [" in lines[0] and "?" in lines[0]  # step 0: no ETA yet
    assert "3/3 [" in lines[-1] and "loss=" in lines[-1] and "tok_s=" in lines[-1]


# --------------------------------------------------------------- NaN: stop, keep the last good checkpoint
class PoisonWeights(TrainerCallback):
    """Makes the weights NaN right after an optimizer step (before that step's checkpoint)."""

    def __init__(self, model, step: int) -> None:
        self.model, self.step = model, step

    def on_step_end(self, state, logs):
        if state.global_step == self.step:
            with torch.no_grad():
                self.model.embed_tokens.weight.fill_(float("nan"))


class PoisonAfterSave(PoisonWeights):
    """Makes the weights NaN after a checkpoint was written: the next step's loss is NaN."""

    def on_step_end(self, state, logs):
        pass

    def on_save(self, state, checkpoint):
        if state.global_step == self.step:
            with torch.no_grad():
                self.model.embed_tokens.weight.fill_(float("nan"))


@pytest.mark.parametrize(
    "poison, message",
    [(PoisonWeights, r"After step 2 the weights hold NaN"), (PoisonAfterSave, r"loss is nan at step 2")],
)
def test_nan_stops_and_keeps_the_last_good_checkpoint(load_tiny, tmp_path, poison, message):
    from safetensors.torch import load_file

    model, tok = load_tiny()
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=4, optim="sgd", learning_rate=1e-2,
                 save_strategy="steps", save_steps=1, save_total_limit=1)  # fmt: skip
    trainer = SFTTrainer(model, cfg, train_dataset=token_rows([4, 5, 6, 7]), processing_class=tok)
    trainer.add_callback(poison(model, 2 if poison is PoisonWeights else 1))
    good = tmp_path / "checkpoint-1"
    with pytest.raises(TrainingDivergedError, match=message + r".*last good checkpoint is .*checkpoint-1"):
        trainer.train()
    assert list_checkpoints(tmp_path) == [good]  # never replaced or rotated out by a bad one
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    saved = load_file(str(good / "trainable.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in saved.values())

    # and the good checkpoint resumes (fresh weights, same run, no poison)
    model2, _ = load_tiny()
    rec = Record()
    SFTTrainer(model2, cfg, train_dataset=token_rows([4, 5, 6, 7]), processing_class=tok,
               callbacks=[rec]).train(resume_from_checkpoint=True)  # fmt: skip
    assert sorted(rec.steps) == [2, 3, 4] and all(math.isfinite(s["loss"]) for s in rec.steps.values())


# ------------------------------------------------------------------ gradient_checkpointing in the config
def test_gradient_checkpointing_from_the_config(load_tiny, tmp_path):
    rows = token_rows([5, 9, 3, 8], seed=4)
    runs = {}
    for gc in (False, True):
        model, tok = load_tiny()
        assert model.gradient_checkpointing is None
        rec = Record()
        cfg = config(tmp_path / str(gc), per_device_train_batch_size=2, max_steps=2, optim="sgd",
                     learning_rate=0.1, gradient_checkpointing=gc)  # fmt: skip
        SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok, callbacks=[rec]).train()
        assert (model.gradient_checkpointing is not None) == gc
        runs[gc] = [rec.steps[s]["loss"] for s in (1, 2)]
    assert runs[True] == pytest.approx(runs[False], rel=1e-6)
    assert runs[True][1] != runs[True][0]

    model, tok = load_tiny()

    def mine(block, x, cos, sin, mask):
        return block(x, cos, sin, mask)

    model.gradient_checkpointing = mine  # a mode already chosen (e.g. "offload") is kept
    cfg = config(tmp_path / "kept", per_device_train_batch_size=2, max_steps=1, gradient_checkpointing=True)
    SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok).train()
    assert model.gradient_checkpointing is mine


# ------------------------------------------------------------------------------------ bad data
def test_empty_dataset_says_so(load_tiny, tmp_path):
    from datasets import Dataset

    model, tok = load_tiny()
    for empty in ([], Dataset.from_dict({"text": []})):
        with pytest.raises(ValueError, match="empty"):
            SFTTrainer(model, config(tmp_path), train_dataset=empty, processing_class=tok)
    trainer = SFTTrainer(model, config(tmp_path, max_steps=1), train_dataset=[{"text": "w5"}],
                         processing_class=tok)  # fmt: skip
    trainer.train_dataset = []  # e.g. emptied by a filter after construction
    with pytest.raises(ValueError, match="train dataset is empty"):
        trainer.train()


@pytest.mark.parametrize("kind", ["text", "tokenized", "dataset"])
def test_over_long_samples_are_truncated_with_one_warning(tokenizer, tmp_path, kind):
    from datasets import Dataset

    lengths = [3, 12, 5, 9, 2]  # with EOS: 4, 13, 6, 10, 3 -> two exceed 8
    if kind == "tokenized":
        rows = [{"input_ids": list(range(4, 4 + n))} for n in lengths]
    else:
        rows = [{"text": " ".join(f"w{4 + j}" for j in range(n))} for n in lengths]
    if kind == "dataset":
        rows = Dataset.from_list(rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = SFTTrainer(torch.nn.Linear(1, 1), config(tmp_path, max_length=8), train_dataset=rows,
                             processing_class=tokenizer)  # fmt: skip
    mine = [w for w in caught if "max_length=8" in str(w.message)]
    assert len(mine) == 1 and str(mine[0].message).startswith("2 of 5 samples")
    data = trainer.train_dataset
    assert [len(r["input_ids"]) for r in data] == [min(n + (kind != "tokenized"), 8) for n in lengths]
    cols = data.column_names if kind == "dataset" else list(data[0])
    assert cols == ["input_ids", "attention_mask"] if kind != "tokenized" else cols == ["input_ids"]

    with warnings.catch_warnings(record=True) as caught:  # nothing too long: no warning
        warnings.simplefilter("always")
        SFTTrainer(torch.nn.Linear(1, 1), config(tmp_path, max_length=64), train_dataset=rows,
                   processing_class=tokenizer)  # fmt: skip
    assert not [w for w in caught if "truncated" in str(w.message)]


# ------------------------------------------------------------------------------ packed == unpacked
def test_packed_step_equals_unpacked_step(load_tiny, tmp_path):
    """Same samples, one optimizer step: packed into one row vs padded rows — same loss and weights."""
    rows = token_rows([5, 9, 3, 7], seed=6)
    results = {}
    for packing, bs in ((False, 4), (True, 1)):
        model, tok = load_tiny()
        rec = Record()
        cfg = config(tmp_path / str(packing), packing=packing, max_length=64, per_device_train_batch_size=bs,
                     max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0)  # fmt: skip
        trainer = SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok, callbacks=[rec])
        if packing:
            assert len(trainer.train_dataset) == 1  # everything in one row
        trainer.train()
        results[packing] = rec.steps[1], {n: p.detach().clone() for n, p in model.named_parameters()}
    (unpacked, w_unpacked), (packed, w_packed) = results[False], results[True]
    assert packed["loss"] == pytest.approx(unpacked["loss"], rel=1e-5)
    assert packed["grad_norm"] == pytest.approx(unpacked["grad_norm"], rel=1e-4)
    for name, w in w_unpacked.items():
        torch.testing.assert_close(w_packed[name], w, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------- Unsloth's names
def test_unsloth_trainer_aliases(load_tiny):
    import loris
    import loris.trainers
    from loris.trainers.optim import parameter_groups

    assert loris.UnslothTrainer is loris.trainers.UnslothTrainer
    assert loris.UnslothTrainingArguments is loris.trainers.UnslothTrainingArguments
    args = loris.UnslothTrainingArguments(output_dir="x", embedding_learning_rate=5e-6, learning_rate=5e-5)
    assert isinstance(args, SFTConfig)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.seed) == (4, 2, 3407)
    assert (args.optim, args.weight_decay, args.logging_steps) == ("adamw_8bit", 0.001, 1)
    model, tok = load_tiny()
    trainer = loris.UnslothTrainer(model=model, tokenizer=tok, train_dataset=[{"text": "w5 w6"}], args=args)
    assert isinstance(trainer, SFTTrainer) and trainer.args.embedding_learning_rate == 5e-6
    rates = {g["name"]: g["lr"] for g in parameter_groups(model, trainer.args)}
    assert rates["embeddings"] == 5e-6 and rates["body"] == 5e-5
    with pytest.raises(ValueError, match="embedding_learning_rate"):
        loris.UnslothTrainingArguments(embedding_learning_rate=-1.0)
