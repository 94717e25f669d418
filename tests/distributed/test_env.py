"""Process-group setup from the launcher's environment, and named failures of collectives."""

from __future__ import annotations

import pytest
from spawn import run_ranks
from workers import lone_collective

from loris.distributed import env


def test_no_launcher_means_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert env.launch_info() == env.RankInfo() and not env.launched()
    assert env.init() == env.RankInfo() and not env.is_initialized()
    assert env.reduce_sum(3) == 3 and env.on_main_process(lambda: 7)() == 7


def test_launcher_environment_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = env.launch_info()
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (2, 0, 4, False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR is not set: start the script with torchrun"):
        env.init()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent"):
        env.launch_info()


def test_a_dead_peer_gives_an_error_naming_the_rank(tmp_path):
    out = tmp_path / "message.txt"
    run_ranks(2, lone_collective, str(out))
    message = out.read_text()
    assert (
        message.startswith("rank 0 of 2: all_reduce (sum) failed") and "Another rank probably died" in message
    )
