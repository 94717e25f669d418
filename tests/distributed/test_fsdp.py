"""FSDP2 (fully_shard per decoder block + root) across 2 CPU ranks: a sharded full fine-tune equals the
unsharded single-process run on the same global batch."""

from __future__ import annotations

import pytest
from test_ddp import ROWS, _ranks, _single, assert_same_run


def test_fsdp2_full_finetune_equals_unsharded(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    common = dict(max_steps=2, learning_rate=0.5, gradient_accumulation_steps=2)
    one = _single(folder, ROWS, tmp_path / "one", "full", {**common, "per_device_train_batch_size": 4})
    many = _ranks(folder, ROWS, tmp_path / "two", "full",
                  {**common, "per_device_train_batch_size": 2, "fsdp": "full_shard"})  # fmt: skip
    assert_same_run(one, many, rtol=1e-4, atol=1e-5)
    assert {m["mode"] for m in many} == {"fsdp"}
    assert len(one["weights"]) > 20  # every weight trains: embeddings, blocks, norms


@pytest.mark.slow
def test_fsdp2_with_activation_checkpointing(saved_family, tmp_path):
    """fsdp_config activation_checkpointing: each block's recompute all-gathers it again."""
    folder = saved_family("llama")[1]
    common = dict(max_steps=2, learning_rate=0.5)
    one = _single(folder, ROWS, tmp_path / "one", "full", {**common, "per_device_train_batch_size": 4})
    many = _ranks(folder, ROWS, tmp_path / "two", "full",
                  {**common, "per_device_train_batch_size": 2, "fsdp": "full_shard",
                   "fsdp_config": {"activation_checkpointing": True}})  # fmt: skip
    assert_same_run(one, many, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_lora(saved_family, tmp_path):
    """LoRA under FSDP2: frozen base and trainable adapters in the same sharded blocks."""
    folder = saved_family("llama")[1]
    common = dict(max_steps=2, learning_rate=1.0)
    one = _single(folder, ROWS, tmp_path / "one", "lora", {**common, "per_device_train_batch_size": 4})
    many = _ranks(folder, ROWS, tmp_path / "two", "lora",
                  {**common, "per_device_train_batch_size": 2, "fsdp": "full_shard"})  # fmt: skip
    assert_same_run(one, many)
