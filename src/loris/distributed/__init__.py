"""Many processes through PyTorch's own engine (torchrun / accelerate launch, DDP, FSDP2).

`env`: rank, world size, process group, named collectives, rank-0-only helpers.
`wrap`: DDP and FSDP2 around a loss call (the model itself stays unwrapped).
`launch`: the torchrun command line `loris train --nproc N` runs.
"""

from loris.distributed.env import (
    RankFailure,
    RankInfo,
    barrier,
    init,
    is_main_process,
    launch_info,
    launched,
    local_device,
    on_main_process,
    rank,
    shutdown,
    world_size,
)

__all__ = [
    "RankFailure",
    "RankInfo",
    "barrier",
    "init",
    "is_main_process",
    "launch_info",
    "launched",
    "local_device",
    "on_main_process",
    "rank",
    "shutdown",
    "world_size",
]
