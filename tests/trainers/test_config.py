"""Configs: validation messages, YAML round trips, TRL aliases, and schedules vs transformers' own."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_scheduler

from loris import SFTConfig
from loris.trainers import TrainingConfig
from loris.trainers.schedule import build_scheduler


# ---------------------------------------------------------------------------- (d) schedules vs oracle
def _lrs(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant_with_warmup", "constant"])
@pytest.mark.parametrize(
    ("warmup", "oracle_warmup"),
    [({"warmup_steps": 3}, 3), ({"warmup_ratio": 0.1}, 2), ({"warmup_steps": 0.25}, 5), ({}, 0)],
)
def test_schedule_matches_transformers(kind, warmup, oracle_warmup):
    total, lr = 17, 2e-4  # ceil(17 * 0.1) = 2 and ceil(17 * 0.25) = 5 warmup steps, written out by hand
    cfg = TrainingConfig(lr_scheduler_type=kind, learning_rate=lr, **warmup)
    assert cfg.total_warmup_steps(total) == oracle_warmup
    ours_opt = _optimizer(lr)
    ours = build_scheduler(ours_opt, kind, total, cfg.total_warmup_steps(total), lr)
    oracle_opt = _optimizer(lr)
    oracle = get_scheduler(kind, oracle_opt, num_warmup_steps=oracle_warmup, num_training_steps=total)
    assert _lrs(ours, ours_opt, total) == pytest.approx(_lrs(oracle, oracle_opt, total), rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("kwargs", [{"min_lr_rate": 0.1}, {"min_lr": 3e-5}])
def test_cosine_with_min_lr_matches_transformers(kwargs):
    total, lr = 12, 3e-4
    cfg = TrainingConfig(
        lr_scheduler_type="cosine_with_min_lr", learning_rate=lr, warmup_steps=2, lr_scheduler_kwargs=kwargs
    )
    ours_opt, oracle_opt = _optimizer(lr), _optimizer(lr)
    ours = build_scheduler(ours_opt, cfg.lr_scheduler_type, total, 2, lr, cfg.lr_scheduler_kwargs)
    oracle = get_scheduler(
        "cosine_with_min_lr",
        oracle_opt,
        num_warmup_steps=2,
        num_training_steps=total,
        scheduler_specific_kwargs=kwargs,
    )
    got, want = _lrs(ours, ours_opt, total), _lrs(oracle, oracle_opt, total)
    assert got == pytest.approx(want, rel=1e-12)
    assert min(got[2:]) > 0  # decays towards the floor, not to zero


def test_schedule_formulas_by_hand():
    """The written formulas at a few points, independent of any library."""
    cfg = TrainingConfig(lr_scheduler_type="linear", learning_rate=1.0, warmup_steps=4)
    opt = _optimizer(1.0)
    lrs = _lrs(build_scheduler(opt, "linear", 10, 4, 1.0), opt, 10)
    assert lrs[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert lrs[7] == pytest.approx((10 - 7) / (10 - 4))
    opt = _optimizer(1.0)
    lrs = _lrs(build_scheduler(opt, "cosine", 10, 0, 1.0), opt, 10)
    assert lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cfg.total_warmup_steps(10) == 4


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0: must be a whole number >= 1"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"max_steps": 0}, "or -1 to train for num_train_epochs"),
        ({"num_train_epochs": 0}, "set one of them"),
        ({"lr_scheduler_type": "polynomial"}, r"choose one of \['linear', 'cosine'"),
        ({"optim": "adafactor"}, r"choose one of \['adamw_torch'"),
        ({"warmup_ratio": 1.5}, r"must be in \[0, 1\)"),
        ({"warmup_ratio": 0.1, "warmup_steps": 5}, "keep one"),
        ({"bf16": True, "fp16": True}, "choose one mixed-precision type"),
        ({"save_strategy": "best"}, r"choose one of \['no', 'steps', 'epoch'\]"),
        ({"lr_scheduler_type": "cosine_with_min_lr"}, "min_lr_rate"),
        ({"adam_beta2": 1.0}, r"must be in \[0, 1\)"),
    ],
)
def test_invalid_settings_say_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**kwargs)


def test_trl_defaults_and_derived_values():
    cfg = TrainingConfig()
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.seed) == (8, 1, 42)
    assert (cfg.learning_rate, cfg.lr_scheduler_type, cfg.optim) == (5e-5, "linear", "adamw_torch_fused")
    assert cfg.report_to == []  # "none"
    sft = SFTConfig()
    assert (sft.learning_rate, sft.logging_steps, sft.dataset_text_field, sft.packing) == (
        2e-5,
        10,
        "text",
        False,
    )
    assert TrainingConfig(eval_strategy="steps", logging_steps=7).eval_steps == 7
    assert TrainingConfig.every(0.1, 95) == 10 and TrainingConfig.every(25, 95) == 25


def test_max_seq_length_is_an_alias_of_max_length():
    assert SFTConfig(max_seq_length=512).max_length == 512
    assert SFTConfig(max_length=256).max_seq_length == 256
    with pytest.raises(ValueError, match="same setting"):
        SFTConfig(max_length=256, max_seq_length=512)
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        SFTConfig(dataset_kwargs={"skip_prepare": True})


# ------------------------------------------------------------------------------------------- YAML
def test_yaml_round_trip(tmp_path):
    cfg = SFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        warmup_steps=5,
        max_steps=60,
        learning_rate=2e-4,
        optim="adamw_8bit",
        weight_decay=0.001,
        seed=3407,
        max_seq_length=2048,
        lr_scheduler_kwargs={"num_cycles": 0.5},
        report_to=["none"],
    )
    path = tmp_path / "train.yaml"
    text = cfg.to_yaml(path)
    assert "gradient_accumulation_steps: 4" in text and path.read_text() == text
    assert SFTConfig.from_yaml(path) == cfg
    assert SFTConfig.from_yaml(text) == cfg


def test_yaml_unknown_key_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no field\(s\) \['per_device_batch_size'\]"):
        SFTConfig.from_yaml("per_device_batch_size: 2\nmax_steps: 3\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainingConfig.from_yaml("- a\n- b\n")
