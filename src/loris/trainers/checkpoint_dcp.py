"""Sharded training state through `torch.distributed.checkpoint` (DCP), for FSDP2 runs.

DCP stores every tensor with its global shape and each rank's piece of it, so a folder written by N
ranks loads on M ranks (M = 1 included, with no process group): each loader asks for the pieces its
own sharding needs. Only trainable parameters are written (``ignore_frozen_params``: a LoRA run does
not copy its base model into every checkpoint); the optimizer state is keyed by parameter name, not
position, so it survives the change of sharding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SHARDED = "sharded"


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the trainable weights and optimizer state into ``folder``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load ``folder`` (written by `save_sharded` on any number of ranks) into this rank's model and
    optimizer, whatever their sharding now (plain tensors in a single process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    state = {"model": model_state, "optimizer": optim_state}
    from loris.distributed.env import is_initialized

    dcp.load(state, checkpoint_id=str(folder), no_dist=not is_initialized())
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_options(),
    )
