"""`loris train recipe.yaml --nproc N`: the torchrun command that runs the same ``loris`` command once
per process.

One machine: ``torchrun --standalone --nproc-per-node N`` (a c10d rendezvous on localhost, on a free
port). Several machines: run the same ``loris train ... --nproc N --nnodes M --rdzv-endpoint
HOST:PORT`` on each (HOST is any one of them); torchrun's c10d rendezvous numbers the nodes and
ranks. Nothing here is loris' own machinery: these are torchrun's flags, passed through.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes, on how many nodes, meeting where (torchrun's names)."""

    nproc_per_node: int
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "loris"

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ValueError(f"--nproc {self.nproc_per_node}: start at least 1 process per node.")
        if self.nnodes < 1:
            raise ValueError(f"--nnodes {self.nnodes}: must be >= 1.")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT (one of the machines, reachable by all), "
                "the same on every node."
            )


def torchrun_command(plan: LaunchPlan, loris_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run <flags> -m loris.cli <loris_args>`` for ``plan``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={plan.nproc_per_node}"]
    if plan.rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={plan.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={plan.rdzv_endpoint}",
            f"--rdzv-id={plan.rdzv_id}",
        ]
    return [*cmd, "-m", "loris.cli", *loris_args]


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` without the flags that only the launching process reads (--nproc, --nnodes, ...)."""
    flags = {"--nproc", "--nnodes", "--rdzv-endpoint", "--rdzv-id"}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
