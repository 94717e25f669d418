"""Training checkpoints: written whole to a temporary folder, then renamed into place.

``output_dir/checkpoint-<step>/`` holds
- ``trainable.safetensors``: every parameter with ``requires_grad``, by ``model.named_parameters()`` name;
- ``optimizer.pt`` / ``scheduler.pt``: their ``state_dict()``;
- ``rng_state.pt``: python, numpy, torch CPU and every CUDA device's generator state;
- ``trainer_state.json``: step, epoch, log history and the data position (epoch + next micro-batch);
- ``training_config.yaml``: the settings it was trained with, for reading (resume uses the live config).
A crash mid-write leaves only a ``.tmp-checkpoint-*`` folder, never a half checkpoint.

Several processes (torchrun): with DDP every rank holds the same trainable weights and optimizer
state, so rank 0 writes the files above and the others wait; such a checkpoint resumes on any number
of ranks. A model sharded with FSDP2 holds DTensors: its trainable weights and optimizer state go
through `torch.distributed.checkpoint` instead (``sharded/``, every rank writing its shards, see
`checkpoint_dcp`), which loads on any number of ranks too, one process included.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loris.distributed.env import barrier, is_main_process, on_main_process
from loris.file_modes import as_if_created_tree

WEIGHTS = "trainable.safetensors"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    config_yaml: str,
) -> Path:
    """Write a checkpoint to ``folder`` atomically (temp folder + rename); returns ``folder``."""
    from loris.distributed.wrap import is_sharded
    from loris.trainers.checkpoint_dcp import SHARDED, save_sharded

    folder = Path(folder)
    tmp = folder.with_name(".tmp-" + folder.name)
    sharded = is_sharded(model)
    main = is_main_process()
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    if sharded:
        save_sharded(tmp / SHARDED, model, optimizer)  # every rank writes its shards
    if not main:
        barrier()  # rank 0 finishes and renames
        return folder
    try:
        _write_main_files(tmp, folder, model, optimizer, scheduler, trainer_state, config_yaml, sharded)
    finally:
        barrier()
    return folder


def _write_main_files(tmp, folder, model, optimizer, scheduler, trainer_state, config_yaml, sharded) -> None:
    from safetensors.torch import save_file

    if not sharded:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    (tmp / "training_config.yaml").write_text(config_yaml)
    as_if_created_tree(tmp)  # safetensors writes 0o600; give what a plain open() would
    if folder.exists():  # re-saving a step (after a resume): swap, then drop the old one
        old = folder.with_name(".old-" + folder.name)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(resume: bool | str | Path, output_dir: str | Path) -> Path:
    """``True`` → the latest checkpoint in ``output_dir``; a path → that folder (checked)."""
    if resume is True:
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"resume_from_checkpoint=True but {output_dir!s} has no checkpoint-<step> folder. "
                "Pass the checkpoint's path, or resume_from_checkpoint=False to start fresh."
            )
        return found[-1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"{path!s} is not a loris checkpoint (no trainer_state.json). Pass a checkpoint-<step> folder "
            "written by the trainer, or resume_from_checkpoint=True for the latest one in output_dir."
        )
    return path


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore parameters, optimizer, scheduler and RNG from ``folder``; returns the trainer state."""
    from loris.distributed.wrap import is_sharded
    from loris.models.weights_file import load_safetensors
    from loris.trainers.checkpoint_dcp import SHARDED, load_sharded

    folder = Path(folder)
    if (folder / SHARDED).is_dir():
        load_sharded(folder / SHARDED, model, optimizer)
        return _load_rest(folder, scheduler)
    if is_sharded(model):
        raise ValueError(
            f"Checkpoint {folder!s} was written by an unsharded run; this model is sharded with FSDP2. Resume "
            "it without fsdp (or with DDP), or restart the FSDP2 run from its own checkpoints."
        )
    saved = load_safetensors(folder / WEIGHTS)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(trainable - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {folder!s} does not match the model's trainable parameters "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]}). Resume with the same model and "
            "adapter settings it was trained with."
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    return _load_rest(folder, scheduler)


def _load_rest(folder: Path, scheduler: Any) -> dict[str, Any]:
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng_state.pt", weights_only=True))
    return json.loads((folder / "trainer_state.json").read_text())


@on_main_process
def rotate_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    """Delete the oldest checkpoints beyond ``keep``."""
    if keep is None:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)
