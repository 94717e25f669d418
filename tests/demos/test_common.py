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


@pytest.mark.parametrize(("load", "want"), [(0.2, None), (0.9, 1), (1.6, 1), (7.5, 1)])
def test_free_cpu_threads_leaves_the_busy_cores_out(monkeypatch, two_threads, load, want):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert common.free_cpu_threads() == want


def test_omp_num_threads_wins(monkeypatch, two_threads):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert common.free_cpu_threads() is None


def test_cpu_threads_sets_then_restores(monkeypatch, two_threads, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    with common.cpu_threads("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    assert "torch runs on 1 thread(s) instead of 2" in capsys.readouterr().out
    with common.cpu_threads("cuda"):
        assert torch.get_num_threads() == 2
