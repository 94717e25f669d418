"""benchmarks/decode_bench.py runs end to end on CPU (tiny shape, 2 tokens) and writes every field the
GPU run is read for. Nothing here is timed: the numbers themselves are only checked to exist."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_bench.py"


@pytest.fixture(scope="module")
def decode_bench():
    spec = importlib.util.spec_from_file_location("decode_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_writes_every_variant_and_the_floor(decode_bench, tmp_path):
    out = tmp_path / "decode.json"
    argv = ["--tiny", "--device", "cpu", "--batch", "2", "--prompt", "5", "--new", "2", "--repeat", "1"]
    argv += ["--profile", "--profile-new", "2", "--top", "4", "--out", str(out)]
    assert decode_bench.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["ok"] and res["shape"] == "tiny" and res["device"] == "cpu"
    assert set(res["variants"]) == {"none_eager", "live_eager", "merged_eager"}
    for rec in res["variants"].values():
        assert rec["ok"], rec.get("error")
        for key in ("ms_per_step", "decode_tok_s", "call_s", "prefill_s", "first_call_s"):
            assert rec[key] > 0, key
        prof = rec["profile"]
        assert prof["decode_steps"] == 1 and 0 < len(prof["top"]) <= 4
        assert all(row["ms_per_step"] >= 0 and row["name"] for row in prof["top"])
    assert [v["merge_lora"] for v in res["variants"].values()] == [False, False, True]
    floor = res["floor"]
    assert floor["copy_bandwidth_gbs"] > 0 and floor["ms_per_step_weights_kv"] > floor["ms_per_step_weights"]
    assert set(res["ms_per_step_ratios"]) == {
        "live_vs_none_eager",
        "merged_vs_none_eager",
        "none_eager_vs_floor",
    }


def test_step_bytes_counts_a_tied_head_once_and_the_kv_cache(decode_bench):
    import torch

    model = decode_bench.build_model("tiny", torch.device("cpu"), torch.float32)
    weights, kv = decode_bench.step_bytes(model, batch=3, context=10)
    shape = decode_bench.SHAPES["tiny"]
    h, inter, layers, vocab = (
        shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    )
    q, kvd = (
        shape["num_attention_heads"] * shape["head_dim"],
        shape["num_key_value_heads"] * shape["head_dim"],
    )
    per_layer = h * (q + 2 * kvd) + q * h + 3 * h * inter + 2 * h
    assert weights == 4 * (layers * per_layer + vocab * h + h)  # fp32; the tied head/embedding once
    assert kv == 4 * 2 * layers * 3 * kvd * 10
