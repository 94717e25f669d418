"""The shared loop against independent oracles: a hand-written PyTorch loop, TRL's accumulation
invariant, bit-exact resume, and the NaN stop."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_testing import Record, epoch_batches, pad_batch, summed_token_loss, token_rows
from transformers import get_scheduler

from loris import SFTConfig, SFTTrainer
from loris.trainers import TrainerCallback, TrainingDivergedError
from loris.trainers.checkpoint import list_checkpoints
from loris.trainers.optim import parameter_groups


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def config(tmp_path, **kw) -> SFTConfig:
    base = dict(output_dir=str(tmp_path), logging_steps=1, save_strategy="no", report_to="none")
    return SFTConfig(**{**base, **kw})


# ------------------------------------------------------------------------ (a) vs a plain PyTorch loop
def test_matches_hand_written_pytorch_loop(load_tiny, tmp_path):
    rows = token_rows([5, 9, 3, 12, 7, 4, 10, 6, 8, 11, 5, 9], seed=1)
    bs, accum, steps, lr, seed = 2, 2, 4, 3e-3, 7  # 6 micro-batches per epoch: step 4 is in epoch 2
    cfg = config(
        tmp_path,
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=accum,
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=1,
        lr_scheduler_type="linear",
        weight_decay=0.1,
        max_grad_norm=0.5,
        optim="adamw_torch",
        seed=seed,
    )
    model, tok = load_tiny()
    rec = Record()
    SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok, callbacks=[rec]).train()

    ref, _ = load_tiny()
    ref.train()
    decay = [p for _, p in ref.named_parameters() if p.ndim >= 2]
    no_decay = [p for _, p in ref.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    sched = get_scheduler("linear", opt, num_warmup_steps=1, num_training_steps=steps)
    order = [mb for epoch in range(2) for mb in epoch_batches(len(rows), bs, seed, epoch)]
    step_groups = [order[0:2], order[2:4], order[4:6], order[6:8]]
    for step, micro in enumerate(step_groups, start=1):
        n_tokens = sum(len(rows[i]["input_ids"]) - 1 for mb in micro for i in mb)
        total = 0.0
        for mb in micro:
            ids, mask = pad_batch([rows[i] for i in mb])
            loss = summed_token_loss(ref, ids, mask) / n_tokens
            loss.backward()
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        used_lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad()
        got = rec.steps[step]
        assert got["loss"] == pytest.approx(total, rel=1e-5), step
        assert got["grad_norm"] == pytest.approx(float(norm), rel=1e-4), step
        assert got["learning_rate"] == pytest.approx(used_lr, rel=1e-12), step
    assert sorted(rec.steps) == [1, 2, 3, 4]
    theirs = params_of(ref)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    start = params_of(load_tiny()[0])
    assert all(not torch.equal(p.detach(), start[n]) for n, p in model.named_parameters())  # all trained


# ---------------------------------------------- (b) batch 1 x accumulation 8 == batch 8 x accumulation 1
class MeanOfMeans(SFTTrainer):
    """The naive accumulation the invariant exists to catch: average the per-micro-batch means."""

    def compute_loss(self, model, batch, num_items_in_batch):
        return model(**batch).loss / self.args.gradient_accumulation_steps


def _accum_run(load_tiny, tmp_path, bs, accum, trainer_cls=SFTTrainer):
    rows = token_rows([2, 14, 5, 9, 3, 12, 7, 4, 13, 6, 8, 2, 11, 5, 10, 3], seed=2)
    cfg = config(
        tmp_path / f"{trainer_cls.__name__}-{bs}x{accum}",
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=accum,
        max_steps=2,
        optim="sgd",  # the update is the gradient itself, so gradient errors show in the weights
        learning_rate=0.5,
        max_grad_norm=0.0,
        seed=3,
    )
    model, tok = load_tiny()
    rec = Record()
    trainer_cls(model, cfg, train_dataset=rows, processing_class=tok, callbacks=[rec]).train()
    return rec.steps, params_of(model)


def test_batch_one_times_accumulation_eight_equals_batch_eight(load_tiny, tmp_path):
    big_steps, big_params = _accum_run(load_tiny, tmp_path, 8, 1)
    small_steps, small_params = _accum_run(load_tiny, tmp_path, 1, 8)
    for step in (1, 2):
        assert small_steps[step]["loss"] == pytest.approx(big_steps[step]["loss"], rel=1e-5)
        assert small_steps[step]["grad_norm"] == pytest.approx(big_steps[step]["grad_norm"], rel=1e-4)
    for name in big_params:
        torch.testing.assert_close(small_params[name], big_params[name], rtol=1e-5, atol=1e-6, msg=name)

    # the same comparison catches mean-of-means accumulation (rows of different lengths)
    naive_steps, naive_params = _accum_run(load_tiny, tmp_path, 1, 8, MeanOfMeans)
    assert abs(naive_steps[1]["loss"] - big_steps[1]["loss"]) > 1e-3 * big_steps[1]["loss"]
    worst = max((naive_params[n] - big_params[n]).abs().max().item() for n in big_params)
    assert worst > 1e-4


# ---------------------------------------------------------------------------- (c) bit-exact resume
def _resume_cfg(out, **kw):
    return config(
        out,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=6,  # 7 micro-batches per epoch: steps of 2, 2, 2, 1 micro-batches, then epoch 2
        learning_rate=2e-3,
        embedding_learning_rate=5e-4,
        weight_decay=0.01,
        warmup_steps=2,
        lr_scheduler_type="cosine",
        save_strategy="steps",
        save_steps=3,
        seed=11,
        **kw,
    )


def test_resume_is_bit_exact(load_tiny, tmp_path):
    rows = token_rows([6, 3, 9, 12, 4, 7, 5, 10, 8, 2, 11, 6, 9, 4], seed=4)

    model, tok = load_tiny()
    straight = Record()
    SFTTrainer(
        model, _resume_cfg(tmp_path / "a"), train_dataset=rows, processing_class=tok, callbacks=[straight]
    ).train()

    crashed_model, tok = load_tiny()
    crashed = Record(crash_at=4)  # dies after step 4; checkpoint-3 is on disk
    with pytest.raises(KeyboardInterrupt):
        SFTTrainer(
            crashed_model,
            _resume_cfg(tmp_path / "b"),
            train_dataset=rows,
            processing_class=tok,
            callbacks=[crashed],
        ).train()
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["checkpoint-3"]

    resumed_model, tok = load_tiny()
    resumed = Record()
    out = SFTTrainer(
        resumed_model,
        _resume_cfg(tmp_path / "b", resume_from_checkpoint=True),
        train_dataset=rows,
        processing_class=tok,
        callbacks=[resumed],
    ).train()

    assert out.global_step == 6 and sorted(resumed.steps) == [4, 5, 6]
    for step in (1, 2, 3):
        assert crashed.steps[step] == straight.steps[step]
    for step in (4, 5, 6):
        assert resumed.steps[step] == straight.steps[step], step  # loss, grad norm, lr: exactly
        assert resumed.draws[step] == straight.draws[step], step  # python / numpy / torch RNG
    final = params_of(model)
    for name, p in resumed_model.named_parameters():
        assert torch.equal(p.detach(), final[name]), name
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # the crashed run's step-4 line was dropped on resume


def test_resume_refuses_a_different_batch_size(load_tiny, tmp_path):
    rows = token_rows([4] * 8)
    model, tok = load_tiny()
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=1, save_strategy="steps", optim="sgd")
    SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok).train()
    other = config(
        tmp_path, per_device_train_batch_size=4, max_steps=2, optim="sgd", resume_from_checkpoint=True
    )
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        SFTTrainer(model, other, train_dataset=rows, processing_class=tok).train()


def test_resume_true_without_checkpoint_says_what_to_do(load_tiny, tmp_path):
    model, tok = load_tiny()
    cfg = config(tmp_path, max_steps=1, resume_from_checkpoint=True)
    with pytest.raises(FileNotFoundError, match="resume_from_checkpoint=False"):
        SFTTrainer(model, cfg, train_dataset=token_rows([4, 5]), processing_class=tok).train()


def test_checkpoints_are_complete_and_rotated(load_tiny, tmp_path):
    from safetensors.torch import load_file

    model, tok = load_tiny()
    cfg = config(
        tmp_path,
        per_device_train_batch_size=2,
        max_steps=3,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
    )
    trainer = SFTTrainer(model, cfg, train_dataset=token_rows([3, 5, 4, 6]), processing_class=tok)
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2",
        "checkpoint-3",
        "log.jsonl",
        "loss.png",
    ]
    ckpt = tmp_path / "checkpoint-3"
    files = {p.name for p in ckpt.iterdir()}
    assert files == {
        "trainable.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pt",
        "trainer_state.json",
        "training_config.yaml",
    }
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert set(saved) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.equal(saved[name], p.detach())
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and (state["data_epoch"], state["data_batch"]) == (1, 1)
    assert SFTConfig.from_yaml(ckpt / "training_config.yaml") == trainer.args
    assert (
        trainer.args.max_length == 2048 and cfg.max_length is None
    )  # the model's; the user's config untouched


# ------------------------------------------------------------------------------------ (g) NaN loss
class Poison(TrainerCallback):
    def __init__(self, model):
        self.model = model

    def on_step_end(self, state, logs):
        if state.global_step == 1:
            with torch.no_grad():
                self.model.embed_tokens.weight.fill_(float("nan"))


def test_nan_loss_stops_naming_the_step(load_tiny, tmp_path):
    model, tok = load_tiny()
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=3, optim="sgd")
    trainer = SFTTrainer(model, cfg, train_dataset=token_rows([4, 5, 6, 7]), processing_class=tok)
    trainer.add_callback(Poison(model))
    with pytest.raises(TrainingDivergedError, match=r"nan at step 2 .*Lower learning_rate.*fp32"):
        trainer.train()
    assert trainer.state.global_step == 1


# ------------------------------------------------------------------------------- optimizer, eval
def test_parameter_groups_decay_and_embedding_rate(load_tiny):
    model, _ = load_tiny()
    groups = {g["name"]: g for g in parameter_groups(model, SFTConfig(weight_decay=0.1, learning_rate=1e-3))}
    assert set(groups) == {"body", "body_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in groups["body_no_decay"]["params"])
    assert groups["body_no_decay"]["weight_decay"] == 0.0 and groups["body"]["weight_decay"] == 0.1

    cfg = SFTConfig(weight_decay=0.1, learning_rate=1e-3, embedding_learning_rate=1e-5)
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    embed = {names[id(p)] for p in groups["embeddings"]["params"]}
    assert embed == {"embed_tokens.weight", "lm_head.weight"}
    assert groups["embeddings"]["lr"] == 1e-5 and groups["body"]["lr"] == 1e-3
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_evaluate_is_the_token_weighted_mean(load_tiny, tmp_path):
    model, tok = load_tiny()
    eval_rows = token_rows([3, 9, 5, 12, 2], seed=5)
    cfg = config(tmp_path, per_device_eval_batch_size=2)
    trainer = SFTTrainer(model, cfg, train_dataset=eval_rows, eval_dataset=eval_rows, processing_class=tok)
    got = trainer.evaluate()["eval_loss"]
    model.eval()
    with torch.no_grad():
        ids, mask = pad_batch(eval_rows)
        want = summed_token_loss(model, ids, mask).item() / sum(len(r["input_ids"]) - 1 for r in eval_rows)
    assert got == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ epochs, strategies, logs, fallbacks
def test_epochs_eval_and_save_strategies_and_log_file(load_tiny, tmp_path):
    model, tok = load_tiny()
    rows = token_rows([3, 5, 4, 6, 2])  # 3 micro-batches of 2 -> steps of 2 + 1 micro-batches per epoch
    cfg = config(
        tmp_path,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_train_epochs=1.5,  # ceil(1.5 * 2) = 3 steps
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="epoch",
        optim="sgd",
    )
    out = SFTTrainer(model, cfg, train_dataset=rows, eval_dataset=rows[:2], processing_class=tok).train()
    assert out.global_step == 3 and out.metrics["epoch"] == pytest.approx(1 + 2 / 3)
    assert set(out.metrics) >= {"train_runtime", "train_samples_per_second", "train_loss"}
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_lines = [entry for entry in lines if "loss" in entry]
    assert [entry["step"] for entry in train_lines] == [1, 2, 3]
    assert set(train_lines[0]) >= {"loss", "grad_norm", "learning_rate", "epoch", "tokens_per_second", "step"}
    assert not any(k.startswith("time/") for k in train_lines[0])  # SFT does not report phase times
    assert [entry["step"] for entry in lines if "eval_loss" in entry] == [2]
    assert out.training_loss == pytest.approx(sum(e["loss"] for e in train_lines) / 3)
    # an epoch ends at step 2; the last step (3) is always saved
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]


def test_eight_bit_optimizer_falls_back_on_cpu_with_a_warning(load_tiny):
    from loris.trainers.optim import build_optimizer

    model, _ = load_tiny()
    with pytest.warns(UserWarning, match="falling back to adamw_torch"):
        opt = build_optimizer(model, SFTConfig(optim="adamw_8bit", learning_rate=1e-3))
    assert type(opt) is torch.optim.AdamW
    assert type(build_optimizer(model, SFTConfig(optim="sgd"))) is torch.optim.SGD


def test_training_twice_starts_a_fresh_schedule(load_tiny, tmp_path):
    model, tok = load_tiny()
    cfg = config(tmp_path, per_device_train_batch_size=2, max_steps=2, warmup_steps=1, learning_rate=1e-3)
    rec = Record()
    trainer = SFTTrainer(
        model, cfg, train_dataset=token_rows([3, 4, 5, 6]), processing_class=tok, callbacks=[rec]
    )
    trainer.train()
    first = [rec.steps[s]["learning_rate"] for s in (1, 2)]
    trainer.train()
    assert [rec.steps[s]["learning_rate"] for s in (1, 2)] == first == [0.0, 1e-3]
