"""Activation checkpointing per decoder block, optionally offloading each block's input to CPU.

Plain mode keeps only each block's input and recomputes the block in backward. ``"offload"`` (alias
``"unsloth"``) moves that input to pinned CPU memory on a side CUDA stream while the next blocks run,
and brings it back for the backward pass, so activation memory no longer grows with depth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

MODES = (True, False, "offload", "unsloth")


class _OffloadedBlock(torch.autograd.Function):
    """Run a block without saving its activations; keep its input on CPU until backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: nn.Module, cos, sin, mask, stream) -> torch.Tensor:
        ctx.block, ctx.cos, ctx.sin, ctx.mask = block, cos, sin, mask
        ctx.device = x.device
        ctx.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(x.device))  # dropout replays identically
        with torch.no_grad():
            out = block(x, cos, sin, mask)
        if stream is not None:
            cpu = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):
                cpu.copy_(x, non_blocking=True)
            x.record_stream(stream)
            ctx.event = torch.cuda.Event()
            ctx.event.record(stream)
            ctx.saved_input = cpu
        else:
            ctx.event = None
            ctx.saved_input = x
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x = ctx.saved_input
        if ctx.event is not None:
            ctx.event.synchronize()
            x = x.to(ctx.device, non_blocking=True)
        x = x.detach().requires_grad_(True)
        with torch.random.fork_rng(devices=[ctx.device]), torch.enable_grad():
            torch.set_rng_state(ctx.rng[0])
            torch.cuda.set_rng_state(ctx.rng[1], ctx.device)
            out = ctx.block(x, ctx.cos, ctx.sin, ctx.mask)
        torch.autograd.backward(out, grad)
        ctx.saved_input = None
        return x.grad, None, None, None, None, None


def make_checkpoint_fn(mode: bool | str) -> Callable | None:
    """The function a model calls per block while training, or None for no checkpointing."""
    if mode not in MODES:
        raise ValueError(f"use_gradient_checkpointing={mode!r}: use True, False, 'offload' or 'unsloth'")
    if mode is False:
        return None
    if mode is True:
        return lambda block, x, cos, sin, mask: checkpoint(block, x, cos, sin, mask, use_reentrant=False)
    streams: dict[torch.device, torch.cuda.Stream] = {}

    def offloaded(block, x, cos, sin, mask):
        if not x.requires_grad:  # the first block's input: backward must still reach this block's adapters
            x = x.detach().requires_grad_(True)
        if not x.is_cuda:  # nothing to offload to: plain checkpointing
            return checkpoint(block, x, cos, sin, mask, use_reentrant=False)
        stream = streams.get(x.device)
        if stream is None:
            stream = streams[x.device] = torch.cuda.Stream(x.device)
        return _OffloadedBlock.apply(x, block, cos, sin, mask, stream)

    return offloaded
