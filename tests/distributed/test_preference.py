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


def test_dpo_two_ranks_equal_one_process(saved_family, tmp_path):
    _compare(saved_family, tmp_path, "dpo", pair_rows(11, seed=4))


def test_kto_two_ranks_equal_one_process(saved_family, tmp_path):
    _compare(saved_family, tmp_path, "kto", unpaired_rows(11, seed=5))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_precomputed_reference_two_ranks_equal_one_process(saved_family, tmp_path, method):
    rows = pair_rows(11, seed=4) if method == "dpo" else unpaired_rows(11, seed=5)
    _compare(saved_family, tmp_path, method, rows, precompute_ref_log_probs=True)
