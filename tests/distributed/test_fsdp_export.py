"""Exports straight from an FSDP2-sharded full fine-tune on 2 CPU ranks: every rank calls
``save_pretrained_merged`` (as a torchrun script does), rank 0 writes, and the files are the bytes a
single process writes from the same weights; they reload in transformers with the single-process
run's logits."""

from __future__ import annotations

import os

import pytest
import torch
from export_workers import export, export_from_rank0_alone, qlora_export_error, train_and_export
from spawn import run_ranks
from test_ddp import ROWS
from workers import full_model, lora_model

METHODS = ["merged_16bit", "merged_32bit"]
SETTINGS = dict(max_steps=2, learning_rate=0.5, gradient_accumulation_steps=2)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _logits(folder, ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


def _sharded_run(folder, out, methods, kind="full") -> dict:
    run_ranks(2, train_and_export, str(folder), ROWS, str(out),
              {**SETTINGS, "per_device_train_batch_size": 2, "fsdp": "full_shard"}, methods, kind)  # fmt: skip
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    assert {r["mode"] for r in ranks} == {"fsdp"}
    assert ranks[0]["paths"] == ranks[1]["paths"]  # rank 1 got rank 0's result
    assert set(methods) <= {p.name for p in out.iterdir()}
    assert not list(out.rglob(".*")), "a temporary folder or file was left behind"
    return ranks[0]


def _assert_single_process_writes_the_same(folder, run, out, ref_root, methods, kind="full") -> None:
    """One process exports the weights the sharded run ended with: byte-identical files, usual modes."""
    model, tok = full_model(str(folder)) if kind == "full" else lora_model(str(folder))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, w in run["weights"].items():
            params[name].copy_(w)
    mask = os.umask(0)
    os.umask(mask)
    for method in methods:
        ref = export(model, tok, method, ref_root / method)
        ref = ref if ref.is_dir() else ref.parent
        got = _files(out / method)
        assert got.keys() == _files(ref).keys()
        assert got == _files(ref), method
        for p in (out / method).iterdir():
            assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p.name


def test_fsdp2_merged_exports_equal_single_process(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    out = tmp_path / "two"
    run = _sharded_run(folder, out, METHODS)
    _assert_single_process_writes_the_same(folder, run, out, tmp_path / "ref", METHODS)

    # The single-process run of the same global batch, exported: same logits in transformers.
    train_and_export(str(folder), ROWS, str(tmp_path / "one"), {**SETTINGS, "per_device_train_batch_size": 4},
                     METHODS)  # fmt: skip
    ids = torch.tensor([[1, 5, 9, 3, 12, 7, 4, 10]])
    for method, tol in (("merged_32bit", 1e-4), ("merged_16bit", 3e-2)):
        torch.testing.assert_close(
            _logits(out / method, ids),
            _logits(tmp_path / "one" / method, ids),
            rtol=tol,
            atol=tol,
            msg=method,
        )


@pytest.mark.slow
def test_fsdp2_gguf_export_equals_single_process(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    out = tmp_path / "two"
    run = _sharded_run(folder, out, ["gguf"])
    _assert_single_process_writes_the_same(folder, run, out, tmp_path / "ref", ["gguf"])


@pytest.mark.slow
def test_fsdp2_lora_adapter_and_merge_equal_single_process(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    out, methods = tmp_path / "two", ["adapter", "merged_16bit"]
    run = _sharded_run(folder, out, methods, kind="lora")
    assert any(bool(w.abs().sum() > 0) for n, w in run["weights"].items() if "lora_B" in n)  # trained
    _assert_single_process_writes_the_same(folder, run, out, tmp_path / "ref", methods, kind="lora")


def test_fsdp2_qlora_export_says_what_to_do(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    run_ranks(2, qlora_export_error, str(folder), str(tmp_path))
    messages = {(tmp_path / f"rank{r}.txt").read_text() for r in range(2)}
    assert len(messages) == 1, messages  # every rank raised, before any collective
    (message,) = messages
    assert "quantized" in message and "FSDP2" in message and "QLoRA with DDP" in message
    assert not (tmp_path / "adapter").exists()


def test_export_from_rank0_alone_refuses_instead_of_waiting(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    run_ranks(2, export_from_rank0_alone, str(folder), str(tmp_path))
    zero, one = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert zero.startswith("ValueError") and "runs on rank 0 alone" in zero and "every rank" in zero
    assert one.startswith("RankFailure") and "failed on rank 0" in one
    assert not (tmp_path / "m").exists()
