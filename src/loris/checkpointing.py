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


class _Offloader:
    """Per-device state shared by a model's blocks: a side stream for the copies, pinned CPU buffers
    reused from step to step, and the blocks' forward order, so that while block i recomputes in
    backward, block i-1's input is already on its way back to the GPU.

    Every copy runs on the side stream, so a buffer handed back after its copy to the GPU was
    queued can be refilled by a later forward without waiting on the host.
    """

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device)
        self.free: dict[tuple, list[torch.Tensor]] = {}
        self.order: list = []  # ctx per offloaded block of the forward passes not yet back-propagated
        self.pending = 0

    def offload(self, ctx, x: torch.Tensor) -> None:
        key = (tuple(x.shape), x.dtype)
        pool = self.free.setdefault(key, [])
        cpu = pool.pop() if pool else torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(x.device))  # x is computed
        with torch.cuda.stream(self.stream):
            cpu.copy_(x, non_blocking=True)
        x.record_stream(self.stream)  # x's memory is not reused before the copy is done
        if self.pending == 0:
            self.order = []
        ctx.cpu, ctx.key, ctx.on_gpu, ctx.ready, ctx.taken = cpu, key, None, None, False
        ctx.index = len(self.order)
        self.order.append(ctx)
        self.pending += 1

    def _fetch(self, ctx) -> None:
        """Queue the copy of ``ctx``'s input back to the GPU (once) and free its pinned buffer."""
        if ctx.on_gpu is not None:
            return
        self.stream.wait_stream(torch.cuda.current_stream(ctx.device))
        with torch.cuda.stream(self.stream):
            ctx.on_gpu = ctx.cpu.to(ctx.device, non_blocking=True)
            ctx.ready = torch.cuda.Event()
            ctx.ready.record(self.stream)
        self.free[ctx.key].append(ctx.cpu)
        ctx.cpu = None

    def take(self, ctx) -> torch.Tensor:
        """This block's input back on the GPU; starts bringing back the block before it."""
        self._fetch(ctx)
        main = torch.cuda.current_stream(ctx.device)
        main.wait_event(ctx.ready)
        x, ctx.on_gpu, ctx.taken = ctx.on_gpu, None, True
        x.record_stream(main)
        self.pending -= 1
        if ctx.index > 0 and not self.order[ctx.index - 1].taken:
            self._fetch(self.order[ctx.index - 1])
        if self.pending == 0:
            self.order = []
        return x


class _OffloadedBlock(torch.autograd.Function):
    """Run a block without saving its activations; keep its input on CPU until backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: nn.Module, cos, sin, mask, offloader) -> torch.Tensor:
        ctx.block, ctx.cos, ctx.sin, ctx.mask = block, cos, sin, mask
        ctx.device = x.device
        ctx.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(x.device))  # dropout replays identically
        with torch.no_grad():
            out = block(x, cos, sin, mask)
        ctx.offloader = offloader
        offloader.offload(ctx, x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x = ctx.offloader.take(ctx).detach().requires_grad_(True)
        with torch.random.fork_rng(devices=[ctx.device]), torch.enable_grad():
            torch.set_rng_state(ctx.rng[0])
            torch.cuda.set_rng_state(ctx.rng[1], ctx.device)
            out = ctx.block(x, ctx.cos, ctx.sin, ctx.mask)
        torch.autograd.backward(out, grad)
        return x.grad, None, None, None, None, None


def make_checkpoint_fn(mode: bool | str) -> Callable | None:
    """The function a model calls per block while training, or None for no checkpointing."""
    if mode not in MODES:
        raise ValueError(f"use_gradient_checkpointing={mode!r}: use True, False, 'offload' or 'unsloth'")
    if mode is False:
        return None
    if mode is True:
        return lambda block, x, cos, sin, mask: checkpoint(block, x, cos, sin, mask, use_reentrant=False)
    offloaders: dict[torch.device, _Offloader] = {}

    def offloaded(block, x, cos, sin, mask):
        if not torch.is_grad_enabled():  # no backward will come: nothing to keep
            return block(x, cos, sin, mask)
        if not x.requires_grad:  # the first block's input: backward must still reach this block's adapters
            x = x.detach().requires_grad_(True)
        if not x.is_cuda:  # nothing to offload to: plain checkpointing
            return checkpoint(block, x, cos, sin, mask, use_reentrant=False)
        offloader = offloaders.get(x.device)
        if offloader is None:
            offloader = offloaders[x.device] = _Offloader(x.device)
        return _OffloadedBlock.apply(x, block, cos, sin, mask, offloader)

    return offloaded
