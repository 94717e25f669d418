"""DDP and FSDP2 around a loss function, never around the model's identity.

`LossCall` is the only module DDP or FSDP2 wraps. Its forward runs ``fn(model, *args)``: the
trainer's own loss function on the plain loris model. So everything the trainer and the face know
about the model (its config, methods such as ``hidden_states`` that GRPO calls, its declared
state) stays on the object the user holds; the wrapper only brackets one loss computation with the
bookkeeping DDP (gradient buckets all-reduced while backward runs) or FSDP2 (all-gather before,
reduce-scatter after) needs.

- DDP reduces only parameters with ``requires_grad`` (the adapters under LoRA/QLoRA). The frozen
  base is neither broadcast at wrap time nor every step (``init_sync=False``,
  ``broadcast_buffers=False``); the trainable parameters are broadcast from rank 0 once instead.
- FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each decoder block, then the root
  (embeddings, final norm, LM head) through `LossCall`. Parameters become DTensors in place on the
  loris model; buffers (NF4 packed weights are buffers) are not sharded, so a 4-bit base is
  replicated on every rank under FSDP2 while its adapters are sharded.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loris.distributed.env import broadcast_, local_device


class LossCall(nn.Module):
    """``LossCall(model)(fn, *args)`` is ``fn(model, *args)``: the module data-parallel wrappers see."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def wrap_ddp(
    model: nn.Module,
    *,
    bucket_cap_mb: float | None = None,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """A DDP-wrapped `LossCall` over ``model``, whose trainable parameters rank 0 broadcasts first."""
    from torch.nn.parallel import DistributedDataParallel

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            "The model has no trainable parameters, so there is nothing for data parallel training to "
            "update: add adapters with FastLanguageModel.get_peft_model, or load with full_finetuning=True."
        )
    for p in trainable:
        broadcast_(p.data)
    device = trainable[0].device
    # Buffers (NF4 packed weights among them) are never synced: every rank loaded the same ones. Newer
    # torch names that forward_sync_buffers (broadcast_buffers warns there); with init_sync=False the
    # two mean the same, and older torch (2.11) knows only broadcast_buffers.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = {
        "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False
    }
    return DistributedDataParallel(
        LossCall(model),
        device_ids=[device] if device.type == "cuda" else None,
        init_sync=False,
        bucket_cap_mb=bucket_cap_mb,
        find_unused_parameters=find_unused_parameters,
        **no_buffer_sync,
    )


@dataclass
class ShardSettings:
    """How FSDP2 shards: resharding after forward (ZeRO-3) or not (ZeRO-2), CPU offload, precisions."""

    reshard_after_forward: bool = True
    cpu_offload: bool = False
    param_dtype: torch.dtype | None = None  # None: compute in the parameters' own dtype
    reduce_dtype: torch.dtype | None = None


def shard_fsdp2(model: nn.Module, settings: ShardSettings) -> nn.Module:
    """``fully_shard`` each block of ``model.layers``, then the root through a `LossCall`; returns
    that root. The blocks' ``backward_terms`` (used by loris' activation checkpointing to recompute a
    block) is registered as a forward method, so recomputation all-gathers the block too."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    device = local_device()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=settings.param_dtype, reduce_dtype=settings.reduce_dtype)
    offload = CPUOffloadPolicy() if settings.cpu_offload else OffloadPolicy()
    layers = getattr(model, "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(model).__name__} has no .layers: loris shards its own decoder (one FSDP unit per block)."
        )
    if not settings.cpu_offload and device.type == "cuda":
        model.to(device)
    for block in layers:
        fully_shard(
            block,
            mesh=mesh,
            reshard_after_forward=settings.reshard_after_forward,
            mp_policy=mp,
            offload_policy=offload,
        )
        if hasattr(block, "backward_terms"):
            register_fsdp_forward_method(block, "backward_terms")
    root = LossCall(model)
    fully_shard(
        root,
        mesh=mesh,
        reshard_after_forward=settings.reshard_after_forward,
        mp_policy=mp,
        offload_policy=offload,
    )
    return root


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` holds DTensor parameters (it was sharded with FSDP2); False for anything
    that is not a module."""
    if not isinstance(model, nn.Module):
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (every rank gets it; a collective), or ``t`` itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module | None, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) of a non-final micro-batch."""
    if wrapped is None or sync:
        if wrapped is not None and hasattr(wrapped, "set_requires_gradient_sync"):
            wrapped.set_requires_gradient_sync(True)
        yield
        return
    if hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
        return
    wrapped.set_requires_gradient_sync(False)  # FSDP2: stays off until the final micro-batch turns it on
    yield


def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of an FSDP2-sharded ``model`` as one full plain tensor on rank 0's
    CPU (a collective: every rank must call it; the other ranks get an empty dict).

    `get_model_state_dict` with ``cpu_offload`` all-gathers one tensor at a time and moves it to
    rank 0's CPU before the next, so no GPU ever holds more than one full tensor beyond its shards
    and the other ranks keep nothing: rank 0's CPU ends up holding the model once, as a
    single-process export of it would. (Unsharding whole blocks with FSDP2's ``unshard`` would hold
    a whole block on every GPU and still need the whole model in one place for the export code.)"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


SHARDED_EXPORT_HELP = (
    "save a training checkpoint (trainer.save_checkpoint(), or save_strategy), load it in ONE process "
    "(python, no torchrun) with resume_from_checkpoint and export from there; or train LoRA with DDP "
    "(fsdp unset), whose exports work directly"
)


def export_on_main_process(
    fn: Callable[..., Any] | None = None,
    *,
    check_sharded: Callable[[nn.Module], None] | None = None,
    unsharded: Callable[[nn.Module, dict[str, torch.Tensor]], nn.Module] | None = None,
) -> Callable[..., Any]:
    """For ``fn(model, ...)`` that writes or uploads ``model``: rank 0 runs it, the others wait (see
    `loris.distributed.env.on_main_process`).

    A model sharded with FSDP2 is held by no single rank. Given ``unsharded``, every rank first runs
    ``check_sharded(model)`` (which raises, on every rank alike, for what cannot be exported that
    way), then takes part in `gather_full_state`; rank 0 builds ``unsharded(model, full_state)``, a
    plain model holding the full weights on its CPU, and runs ``fn`` on it, so the files come from the
    same code as a single-process export. Without ``unsharded`` a sharded model raises, saying how to
    export it instead. Use as ``@export_on_main_process`` or ``@export_on_main_process(unsharded=...)``."""
    if fn is None:
        return functools.partial(export_on_main_process, check_sharded=check_sharded, unsharded=unsharded)
    from loris.distributed.env import in_main_only, named_collective, on_main_process

    main_only = on_main_process(fn)

    @functools.wraps(fn)
    def inner(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not is_sharded(model):
            return main_only(model, *args, **kwargs)
        if unsharded is None:
            raise ValueError(
                f"{fn.__name__}: this model is sharded across ranks by FSDP2 (fsdp=...), so no rank holds its "
                f"weights and {fn.__name__} cannot gather them. Instead, {SHARDED_EXPORT_HELP}."
            )
        if in_main_only():
            raise ValueError(
                f"{fn.__name__} was called with an FSDP2-sharded model from code that runs on rank 0 alone "
                "(inside an on_main_process function): gathering its weights needs every rank. Call it on "
                "every rank (as after trainer.train() in a torchrun script); rank 0 then writes the files."
            )
        if check_sharded is not None:
            check_sharded(model)
        full = named_collective("gathering the sharded weights for export", gather_full_state)(model)

        @functools.wraps(fn)
        def on_full_copy(sharded: nn.Module, *rest: Any, **kw: Any) -> Any:
            return fn(unsharded(sharded, full), *rest, **kw)

        try:
            return on_main_process(on_full_copy)(model, *args, **kwargs)
        finally:
            full.clear()  # rank 0: let the gathered weights go as soon as the export is done

    return inner
