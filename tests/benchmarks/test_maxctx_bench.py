"""benchmarks/maxctx_bench.py: the search's bracket logic against a known limit, and (slow) a whole CPU
run of tiny tries, each in its own process. Nothing is timed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "maxctx_bench.py"


@pytest.fixture(scope="module")
def maxctx():
    spec = importlib.util.spec_from_file_location("maxctx_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["maxctx_bench"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("maxctx_bench", None)


def _search_to_the_end(search, limit, slow_above=None):
    seen = []
    while (seq := search.next()) is not None:
        seen.append(seq)
        assert seq % search.grain == 0 and search.fit < seq <= search.hi
        outcome = "fit" if seq <= limit else "oom"
        if slow_above is not None and seq > slow_above:
            outcome = "timeout"
        search.record(seq, outcome, {"step_s": 1.0, "wall_s": 2.0})
    return seen


@pytest.mark.parametrize("limit", [140_000, 262_144, 300_000, 342_733, 500_000])
def test_the_search_brackets_the_limit_to_one_grain(maxctx, limit):
    s = maxctx.Search(lo=131072, hi=524288, start=262144, grain=8192)
    seen = _search_to_the_end(s, limit)
    assert seen[0] == 262144 and len(seen) == len(set(seen))
    assert s.done == "bracketed" and s.fit <= limit < s.nofit and s.nofit - s.fit <= s.grain
    assert s.fit > limit - s.grain


def test_the_cap_ends_the_search_and_a_timeout_counts_as_no_fit(maxctx):
    s = maxctx.Search(lo=131072, hi=524288, start=262144, grain=8192)
    assert _search_to_the_end(s, 10**9) == [262144, 524288] and (s.done, s.fit) == ("cap", 524288)
    s = maxctx.Search(lo=131072, hi=524288, start=262144, grain=8192)
    _search_to_the_end(s, 10**9, slow_above=400_000)
    assert s.fit <= 400_000 < s.nofit and s.tries[-1]["outcome"] in ("fit", "timeout")


def test_killed_tries_are_undecided_and_errors_stop_the_system(maxctx):
    s = maxctx.Search(lo=131072, hi=524288, start=262144, grain=8192)
    s.record(262144, "killed")
    assert (s.fit, s.nofit, s.done) == (131072, None, None)
    s.record(262144, "error", {"error": "boom"})
    assert s.next() is None and s.done == "error"


def test_estimates_grow_with_the_square_of_the_length(maxctx):
    s = maxctx.Search(lo=1024, hi=8192, start=2048, grain=512)
    assert s.estimate_s(4096, default=500.0) == 500.0
    s.record(2048, "fit", {"step_s": 10.0, "wall_s": 40.0})
    assert s.estimate_s(4096, default=500.0) == pytest.approx(30.0 + 40.0)


@pytest.mark.slow
def test_a_tiny_cpu_search_runs_each_try_in_its_own_process(maxctx, tmp_path):
    out = tmp_path / "maxctx.json"
    argv = ["search", "--shape", "tiny", "--no-qlora", "--device", "cpu", "--systems", "loris"]
    argv += ["--lo", "64", "--start", "128", "--hi", "256", "--grain", "64", "--workdir", str(tmp_path / "w")]
    assert maxctx.main([*argv, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    tries = doc["searches"]["loris"]["tries"]
    assert [(t["seq"], t["outcome"]) for t in tries] == [(128, "fit"), (256, "fit")]
    assert all(t["loss"] > 0 and t["step_s"] >= 0 for t in tries)
    assert doc["results"]["loris"]["max_seq"] == 256 and doc["results"]["loris"]["status"] == "cap"


class _FakeBench:
    """lora_bench's pieces the driver calls, without a model."""

    @staticmethod
    def host_cpu():
        return "fake"

    @staticmethod
    def make_checkpoint(shape, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")


def test_the_driver_takes_turns_keeps_to_the_budget_and_resumes(maxctx, monkeypatch, tmp_path):
    """Fake tries on a fake clock: loris fits 380k, Unsloth 300k; a try at 262,144 takes loris 100 s
    and Unsloth 200 s, longer tries grow with the square of the length."""
    limits = {"loris-offload": 380_000, "unsloth": 300_000}
    seconds = {"loris-offload": 100.0, "unsloth": 200.0}
    clock, calls = [0.0], []

    def fake_try(args, system, ckpt, seq, timeout):
        calls.append((system, seq))
        wall = 40.0 + (seconds[system] - 40.0) * (seq / 262144) ** 2
        if wall > timeout:
            clock[0] += timeout
            return {"outcome": "timeout", "wall_s": timeout}
        clock[0] += wall
        return {"outcome": "fit" if seq <= limits[system] else "oom", "wall_s": wall, "step_s": wall - 40}

    monkeypatch.setattr(maxctx, "lora_bench", lambda: _FakeBench)
    monkeypatch.setattr(maxctx, "run_try", fake_try)
    monkeypatch.setattr(maxctx.time, "time", lambda: clock[0])
    argv = ["search", "--workdir", str(tmp_path), "--grain", "16384"]
    first = tmp_path / "first.json"
    assert maxctx.main([*argv, "--budget-s", "250", "--out", str(first)]) == 0
    # loris fits at 100 s; Unsloth, estimated from loris at 100 s, is killed at the budget's end (150 s
    # left); neither has room for another try
    assert calls == [("loris-offload", 262144), ("unsloth", 262144)]
    doc = json.loads(first.read_text())
    assert [t["outcome"] for t in doc["searches"]["unsloth"]["tries"]] == ["killed"]
    assert doc["results"]["unsloth"]["status"].startswith("unfinished")

    calls.clear()
    second = tmp_path / "second.json"
    assert maxctx.main([*argv, "--budget-s", "100000", "--resume", str(first), "--out", str(second)]) == 0
    assert calls[0] == ("unsloth", 262144)  # the killed try again, first: Unsloth has fewer decided tries
    assert [system for system, _ in calls[:4]] == ["unsloth", "loris-offload"] * 2
    doc = json.loads(second.read_text())
    for system, limit in limits.items():
        r = doc["results"][system]
        assert r["status"] == "bracketed" and r["max_seq"] <= limit < r["first_no_fit"], system
        assert r["first_no_fit"] - r["max_seq"] <= 16384
