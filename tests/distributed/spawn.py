"""Start ``world`` CPU processes joined by a gloo process group, as torchrun would, and run a function.

Each child gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so
the code under test opens the process group itself, exactly as under a real launch."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CUDA_VISIBLE_DEVICES="",
    )
    import sys

    import torch

    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        from loris.distributed import shutdown

        shutdown()
    # The rank's work is done and its results are on disk: leave without the interpreter's teardown.
    # On the 2-core machine a child now and then died there with SIGABRT ("terminate called without
    # an active exception", a C++ thread object destroyed at exit) after an FSDP2 run had finished,
    # failing a test whose numbers were right (tests/distributed/test_checkpoint.py, twice in ~6 runs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(world: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``world`` fresh processes (rank from the environment); raises if one fails."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _child, args=(world, free_port(), fn, args), nprocs=world, join=True, start_method="spawn"
    )
