"""DPO and KTO across 2 CPU ranks (gloo, DDP): N ranks × batch b train exactly as 1 process × batch N·b.

11 rows, batch 4 on one process (2 per rank), accumulation 2: step 2 is the epoch's last micro-batch
of 3 rows, split 2 + 1 over the ranks, so a mean of per-rank means (of the loss, the rewards or KTO's
KL estimate) would differ from the one-process run, where every number is over the global batch."""

from __future__ import annotations

import pytest
import torch
from preference_testing import pair_rows, unpaired_rows
from preference_workers import preference_train
from spawn import run_ranks

METRICS = {
    "dpo": ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"),
    "kto": ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl"),
}  # fmt: skip


def _compare(saved_family, tmp_path, method, rows, **settings):
    folder = str(saved_family("llama")[1])
    common = dict(max_steps=3, gradient_accumulation_steps=2, **settings)
    preference_train(
        folder, method, rows, str(tmp_path / "one"), {**common, "per_device_train_batch_size": 4}
    )
    one = torch.load(tmp_path / "one" / "rank0.pt")
    run_ranks(2, preference_train, folder, method, rows, str(tmp_path / "two"),
              {**common, "per_device_train_batch_size": 2})  # fmt: skip
    many = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in range(2)]
    assert one["mode"] == "single" and {m["mode"] for m in many} == {"ddp"}
    assert sorted(one["steps"]) == sorted(many[0]["steps"]) == [1, 2, 3]
    for step, logs in one["steps"].items():
        for got in many:
            assert got["steps"][step]["loss"] == pytest.approx(logs["loss"], rel=1e-4, abs=1e-6), step
            assert got["steps"][step]["grad_norm"] == pytest.approx(logs["grad_norm"], rel=1e-4, abs=1e-6), (
                step
            )
    for i, entry in enumerate(one["logs"]):
        for got in many:
            logged = [k for k in METRICS[method] if k in entry]  # KTO: a batch may hold one label only
            assert logged == [k for k in METRICS[method] if k in got["logs"][i]], i
            for key in logged:
                assert got["logs"][i][key] == pytest.approx(entry[key], rel=1e-4, abs=1e-6), (i, key)
    assert abs(one["logs"][1]["rewards/rejected"]) > 1e-5  # step 2 (the 2 + 1 split) moved off the reference
    assert {k for e in one["logs"] for k in METRICS[method] if k in e} == set(METRICS[method])
    for name, w in one["weights"].items():
        for got in many:
            torch.testing.assert_close(got["weights"][name], w, rtol=1e-4, atol=1e-6, msg=name)
    assert any(bool(w.abs().sum() > 0) for n, w in one["weights"].items() if "lora_B" in n)
    return one, many


def test_dpo_two_ranks_equal_one_process(saved_family, tmp_path):
    _compare(saved_family, tmp_path, "dpo", pair_rows(11, seed=4))


def test_kto_two_ranks_equal_one_process(saved_family, tmp_path):
    _compare(saved_family, tmp_path, "kto", unpaired_rows(11, seed=5))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_precomputed_reference_two_ranks_equal_one_process(saved_family, tmp_path, method):
    rows = pair_rows(11, seed=4) if method == "dpo" else unpaired_rows(11, seed=5)
    _compare(saved_family, tmp_path, method, rows, precompute_ref_log_probs=True)


@pytest.mark.slow
def test_dpo_rpo_alpha_two_ranks_equal_one_process(saved_family, tmp_path):
    """rpo_alpha's NLL of the chosen answers is a token mean over the global micro-batch, not per rank."""
    _compare(saved_family, tmp_path, "dpo", pair_rows(11, seed=4), rpo_alpha=0.5)


@pytest.mark.slow
def test_dpo_from_a_trained_adapter_two_ranks_equal_one_process(saved_family, tmp_path):
    """Continued training: each rank swaps in its frozen copy of the starting adapter as the reference."""
    one, _ = _compare(saved_family, tmp_path, "dpo", pair_rows(11, seed=4), trained_adapter=True)
    assert one["reference"] == "frozen_adapter"


@pytest.mark.slow
def test_loris_train_dpo_recipe_nproc_2(saved_family, tmp_path, monkeypatch):
    """`loris train` with ``method: dpo`` and ``--nproc 2``: torchrun starts, rank 0 writes the log (with
    TRL's metrics) and one adapter."""
    import json
    import os

    import yaml
    from spawn import free_port

    from loris.cli import main

    monkeypatch.chdir(tmp_path)
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pair_rows(8, seed=6)))
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(saved_family("llama")[1]), "max_seq_length": 64, "dtype": "float32"},
        "lora": {"r": 8, "lora_alpha": 16, "use_gradient_checkpointing": False},
        "data": {"path": "pairs.jsonl"},
        "train": {"output_dir": "out", "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
                  "disable_tqdm": True, "learning_rate": 5e-3},
        "save": {"adapter_dir": "adapter"},
    }  # fmt: skip
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(cfg), "--nproc", "2", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    logs = [json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logs] == [1, 2]
    assert all(k in logs[-1] for k in METRICS["dpo"])
    assert logs[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
