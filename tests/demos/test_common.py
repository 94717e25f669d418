"""What the demos share: settings from the CLI's arguments, and the CPU thread count on a busy machine."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from loris.demos import common
from loris.demos.dpo_demo import DPODemoSettings
from loris.demos.grpo_demo import GRPODemoSettings
from loris.demos.sft_demo import DemoSettings


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(
        **{"model": "m.gguf", "output_dir": None, "max_steps": None, "quick": False, **kw}
    )


@pytest.mark.parametrize(
    ("cls", "folder"),
    [
        (DemoSettings, "loris-demo"),
        (GRPODemoSettings, "loris-demo-grpo"),
        (DPODemoSettings, "loris-demo-dpo"),
    ],
)
def test_settings_from_args(cls, folder):
    s = common.settings_from_args(cls, _args(), folder)
    assert (s.model, s.output_dir, s.max_steps) == ("m.gguf", folder, cls("m").max_steps)
    quick = common.settings_from_args(cls, _args(quick=True, output_dir="o"), folder)
    assert quick == cls.quick("m.gguf", "o")
    assert common.settings_from_args(cls, _args(quick=True, max_steps=7), folder).max_steps == 7


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("busy", "want"), [(0.1, None), (0.45, 1), (0.8, 1), (1.0, 1)])
def test_free_cpu_threads_leaves_the_busy_cores_out(two_threads, busy, want):
    assert common.free_cpu_threads(busy) == want


def test_busy_share_reads_the_present_not_the_load_average(monkeypatch):
    """/proc/stat's ticks over the window: 3 of 4 idle → 25% busy, whatever the trailing load average."""
    samples = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  125 0 125 950 0 0 0 0 0 0\n"])
    monkeypatch.setattr("builtins.open", lambda *a, **k: __import__("io").StringIO(next(samples)))
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert common.busy_share(window_s=0.0) == pytest.approx(0.25)


def test_busy_share_falls_back_to_the_load_average(monkeypatch):
    def no_proc(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert common.busy_share(window_s=0.0) == pytest.approx(0.5)


def test_omp_num_threads_wins(monkeypatch, two_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert common.free_cpu_threads(1.0) is None


def test_cpu_threads_sets_then_restores(monkeypatch, two_threads, capsys):
    monkeypatch.setattr(common, "busy_share", lambda: 0.9)
    with common.cpu_threads("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    assert "torch runs on 1 thread(s) instead of 2" in capsys.readouterr().out
    with common.cpu_threads("cuda"):
        assert torch.get_num_threads() == 2
