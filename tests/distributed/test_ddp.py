"""DDP for LoRA across 2 CPU ranks (gloo): N ranks × batch b train exactly as 1 rank × batch N·b."""

from __future__ import annotations

import pytest
import torch
from spawn import run_ranks
from trainer_testing import token_rows
from workers import sft_train

ROWS = token_rows([5, 9, 3, 12, 7, 4, 10, 6, 8, 11, 5, 9, 6, 7, 3, 12], seed=3)


def _single(folder, rows, out, kind, settings):
    sft_train(str(folder), rows, str(out), kind, settings)
    return torch.load(out / "rank0.pt")


def _ranks(folder, rows, out, kind, settings, world=2):
    run_ranks(world, sft_train, str(folder), rows, str(out), kind, settings)
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


def assert_same_run(one: dict, many: list[dict], rtol=1e-5, atol=1e-6) -> None:
    assert one["steps"].keys() == many[0]["steps"].keys()
    for step, logs in one["steps"].items():
        for got in many:
            assert got["steps"][step]["loss"] == pytest.approx(logs["loss"], rel=rtol, abs=atol), step
            assert got["steps"][step]["grad_norm"] == pytest.approx(logs["grad_norm"], rel=1e-4, abs=atol), (
                step
            )
    for name, w in one["weights"].items():
        for got in many:
            torch.testing.assert_close(got["weights"][name], w, rtol=rtol, atol=atol, msg=name)


def test_two_ranks_batch_2_equal_one_rank_batch_4(saved_family, tmp_path):
    """Unequal row lengths (so padding and token counts differ per rank) and accumulation 2: the
    loss is normalised by the global label-token count, so losses, gradient norms and the SGD-updated
    adapters (lr 1, no clipping: the update is the gradient) match the single process."""
    folder = saved_family("llama")[1]
    common = dict(max_steps=2, learning_rate=1.0, gradient_accumulation_steps=2)
    one = _single(folder, ROWS, tmp_path / "one", "lora", {**common, "per_device_train_batch_size": 4})
    many = _ranks(folder, ROWS, tmp_path / "two", "lora", {**common, "per_device_train_batch_size": 2})
    assert_same_run(one, many)
    assert one["mode"] == "single" and {m["mode"] for m in many} == {"ddp"}
    first = one["weights"]
    assert any(bool(w.abs().sum() > 0) for n, w in first.items() if "lora_B" in n)  # the adapters moved


@pytest.mark.slow
@pytest.mark.parametrize("mode", [True, "offload"])
def test_ddp_with_gradient_checkpointing(saved_family, tmp_path, mode):
    """loris' block recompute (an autograd Function re-entering backward) under DDP's gradient hooks."""
    folder = saved_family("llama")[1]
    common = dict(max_steps=2, learning_rate=1.0, use_gradient_checkpointing=mode)
    one = _single(folder, ROWS, tmp_path / "one", "lora", {**common, "per_device_train_batch_size": 4})
    many = _ranks(folder, ROWS, tmp_path / "two", "lora", {**common, "per_device_train_batch_size": 2})
    assert_same_run(one, many)


@pytest.mark.slow
def test_ddp_qlora(saved_family, tmp_path):
    """NF4 base (buffers, never broadcast by DDP) with LoRA adapters: 2 ranks equal 1 rank."""
    folder = saved_family("llama")[1]
    common = dict(max_steps=2, learning_rate=1.0)
    one = _single(folder, ROWS, tmp_path / "one", "qlora", {**common, "per_device_train_batch_size": 4})
    many = _ranks(folder, ROWS, tmp_path / "two", "qlora", {**common, "per_device_train_batch_size": 2})
    assert_same_run(one, many, rtol=1e-4, atol=1e-5)
