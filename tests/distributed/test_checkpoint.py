"""Checkpoints of a 2-rank run resume on 1 rank: the resumed run ends on the uninterrupted run's weights.

FSDP2 checkpoints go through torch.distributed.checkpoint (each rank writes its shards; one process
reads them back whole); DDP checkpoints are rank 0's plain files (the ranks' states are identical)."""

from __future__ import annotations

import pytest
from test_ddp import ROWS, _ranks, _single, assert_same_run


def _save_on_two_resume_on_one(folder, tmp_path, kind, extra):
    common = dict(max_steps=4, learning_rate=0.01, optim="adamw_torch", max_grad_norm=1.0)
    whole = _single(folder, ROWS, tmp_path / "whole", kind, {**common, "per_device_train_batch_size": 4})
    out = tmp_path / "split"
    _ranks(folder, ROWS, out, kind,
           {**common, **extra, "per_device_train_batch_size": 2, "save_strategy": "steps", "save_steps": 2,
            "stop_at": 2})  # fmt: skip
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    resumed = _single(folder, ROWS, out, kind,
                      {**common, "per_device_train_batch_size": 4, "resume_from_checkpoint": True})  # fmt: skip
    assert set(resumed["steps"]) == {3, 4}
    whole["steps"] = {k: v for k, v in whole["steps"].items() if k > 2}
    return whole, resumed, out / "checkpoint-2"


# Measured tolerance (fp32, CPU): the ranks sum each step's gradient in another order, which moves the
# losses by < 1e-6 relative and, after AdamW (lr 1e-2, whose per-step update is ~1e-2 in size and
# amplifies tiny differences of near-zero gradients), the weights by < 1e-5 (|w| ~ 0.1). A checkpoint
# that lost the optimizer state or the weights would be off by ~1e-2.
WEIGHT_ATOL = 3e-5


def test_fsdp2_checkpoint_on_two_ranks_resumes_on_one(saved_family, tmp_path):
    whole, resumed, ckpt = _save_on_two_resume_on_one(
        saved_family("llama")[1], tmp_path, "full", {"fsdp": "full_shard"}
    )
    assert (ckpt / "sharded").is_dir() and not (ckpt / "trainable.safetensors").exists()
    assert_same_run(whole, [resumed], rtol=1e-5, atol=WEIGHT_ATOL)


@pytest.mark.slow
def test_ddp_checkpoint_on_two_ranks_resumes_on_one(saved_family, tmp_path):
    whole, resumed, ckpt = _save_on_two_resume_on_one(saved_family("llama")[1], tmp_path, "lora", {})
    assert (ckpt / "trainable.safetensors").is_file()
    assert_same_run(whole, [resumed], rtol=1e-5, atol=WEIGHT_ATOL)
