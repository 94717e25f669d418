"""Activation checkpointing per decoder block, optionally offloading each block's input to CPU.

Plain mode keeps only each block's input and recomputes the block in backward. ``"offload"`` (alias
``"unsloth"``) moves that input to pinned CPU memory on a side CUDA stream while the next blocks run,
and brings it back for the backward pass, so activation memory no longer grows with depth.

``"auto"`` is the throughput mode: the first training step recomputes every block (as True) and measures
what one block's activations take; from the second forward on, as many blocks as fit in the memory that
step left free keep their activations and skip the recompute, the rest are recomputed. On CPU it is
plain recompute.

Both are one autograd Function per block (the block runs without autograd in forward and again, with
it, in backward), rather than `torch.utils.checkpoint`'s hook on every saved tensor: on a 16-core
H200 host where a Qwen3-1.7B LoRA step was bound by host time, the Function-based offload mode ran
35.9k tokens/s against 25.8k for `torch.utils.checkpoint` (benchmarks/results/2026-11-25-H200-qwen3-
offload.json). Like every re-entrant checkpoint, gradients reach parameters through ``backward()``;
``torch.autograd.grad`` cannot see through these blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MODES = (True, False, "offload", "unsloth", "auto")


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


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _recompute_backward(ctx, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
    """Run ``ctx.block`` again on ``x`` with the forward's RNG state (dropout replays identically) and
    back-propagate ``grad`` through it; the gradient of ``x`` when the original input needed one.
    Otherwise (the first block's input, frozen embeddings) no input gradient is computed at all."""
    x = x.detach().requires_grad_(ctx.input_needs_grad)
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.set_rng_state(ctx.rng[0])
        if ctx.rng[1] is not None:
            torch.cuda.set_rng_state(ctx.rng[1], ctx.device)
        terms = _backward_terms(ctx.block, x, ctx.cos, ctx.sin, ctx.mask)
    terms = [t for t in terms if t.requires_grad]
    if terms:
        torch.autograd.backward(terms, [grad] * len(terms))
    return x.grad if ctx.input_needs_grad else None


def _backward_terms(block, x, cos, sin, mask) -> tuple[torch.Tensor, ...]:
    """Tensors summing to ``block``'s output; a block with ``backward_terms`` (`loris.models.decoder.Block`)
    leaves out work that only produces output values, which back-propagation never reads."""
    terms = getattr(block, "backward_terms", None)
    return terms(x, cos, sin, mask) if terms is not None else (block(x, cos, sin, mask),)


def _keep_call(
    ctx, x: torch.Tensor, block: nn.Module, cos, sin, mask, input_needs_grad: bool
) -> torch.Tensor:
    """What both Functions do in forward: remember how to recompute, then run without autograd."""
    ctx.block, ctx.cos, ctx.sin, ctx.mask = block, cos, sin, mask
    ctx.device, ctx.input_needs_grad = x.device, input_needs_grad
    ctx.rng = _rng_state(x.device)
    with torch.no_grad():
        return block(x, cos, sin, mask)


class _RecomputedBlock(torch.autograd.Function):
    """Run a block without saving its activations; keep its input and recompute the block in backward."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, block: nn.Module, cos, sin, mask, input_needs_grad: bool
    ) -> torch.Tensor:
        out = _keep_call(ctx, x, block, cos, sin, mask, input_needs_grad)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return _recompute_backward(ctx, x, grad), None, None, None, None, None


class _OffloadedBlock(torch.autograd.Function):
    """Run a block without saving its activations; keep its input on CPU until backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: nn.Module, cos, sin, mask, offloader, input_needs_grad: bool):
        out = _keep_call(ctx, x, block, cos, sin, mask, input_needs_grad)
        ctx.offloader = offloader
        offloader.offload(ctx, x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x = ctx.offloader.take(ctx)
        return _recompute_backward(ctx, x, grad), None, None, None, None, None, None


class CudaMemory:
    """What the "auto" mode reads of a CUDA device's memory (a fake stands in for it on CPU tests)."""

    def allocated(self, device: torch.device) -> int:
        return torch.cuda.memory_allocated(device)

    def peak(self, device: torch.device) -> int:
        return torch.cuda.max_memory_allocated(device)

    def usable(self, device: torch.device) -> int:
        """Bytes this process may hold: the card's memory less what other processes and the CUDA
        context take (everything not reserved by this process's allocator)."""
        free, total = torch.cuda.mem_get_info(device)
        others = total - free - torch.cuda.memory_reserved(device)
        return total - others


def blocks_to_keep(
    n_blocks: int, block_bytes: int, peak_bytes: int, usable_bytes: int, fraction: float
) -> int:
    """How many blocks can keep their activations: the headroom the all-recompute step left under
    ``fraction`` of the usable memory, in whole blocks, counting the block measured while keeping
    (it is in ``peak_bytes`` already)."""
    if block_bytes <= 0:
        return n_blocks
    headroom = int(usable_bytes * fraction) - peak_bytes
    return max(0, min(n_blocks, 1 + headroom // block_bytes))


class KeepPlan:
    """The "auto" mode's state for one model: the blocks in call order, one block's activation bytes
    (measured by running the first block with autograd in the first training forward), and from the
    second forward on, the index from which blocks keep their activations (the last blocks: backward
    frees theirs first)."""

    def __init__(self, memory=None, fraction: float = 0.9):
        self.memory = memory
        self.fraction = fraction
        self.index: dict[int, int] = {}  # id(block) -> position in the forward
        self.block_bytes: int | None = None
        self.keep_from: int | None = None  # None until decided

    @property
    def kept(self) -> int:
        return 0 if self.keep_from is None else len(self.index) - self.keep_from

    def position(self, block: nn.Module) -> int:
        return self.index.setdefault(id(block), len(self.index))

    def decide(self, device: torch.device) -> None:
        n = len(self.index)
        keep = blocks_to_keep(
            n,
            self.block_bytes or 0,
            self.memory.peak(device),
            self.memory.usable(device),
            self.fraction,
        )
        self.keep_from = n - keep

    def keeps(self, i: int, device: torch.device) -> bool:
        """Whether block ``i`` of this forward runs with autograd (activations kept)."""
        if self.memory is None:
            return False
        if self.block_bytes is None:  # first training forward: measure on the first block
            return i == 0
        if self.keep_from is None and i == 0:  # the second forward: the first step's peak is known
            self.decide(device)
        return self.keep_from is not None and i >= self.keep_from

    def call_kept(self, block, x, cos, sin, mask) -> torch.Tensor:
        if self.block_bytes is not None:
            return block(x, cos, sin, mask)
        before = self.memory.allocated(x.device)
        out = block(x, cos, sin, mask)
        # what keeping costs beyond the recompute path, which keeps the output as the next input too
        self.block_bytes = self.memory.allocated(x.device) - before - out.numel() * out.element_size()
        return out


def make_checkpoint_fn(mode: bool | str, memory=None) -> Callable | None:
    """The function a model calls per block while training, or None for no checkpointing.

    ``memory`` (the "auto" mode only) reads device memory; by default CUDA's, and on CPU nothing, so that
    "auto" recomputes every block there."""
    if mode not in MODES:
        raise ValueError(
            f"use_gradient_checkpointing={mode!r}: use True, False, 'offload' (alias 'unsloth') or 'auto'"
        )
    if mode is False:
        return None
    offloaders: dict[torch.device, _Offloader] = {}
    plan = KeepPlan(memory) if mode == "auto" else None

    def checkpointed(block, x, cos, sin, mask):
        if not torch.is_grad_enabled():  # no backward will come: nothing to keep
            return block(x, cos, sin, mask)
        if plan is not None:
            if plan.memory is None and x.is_cuda:
                plan.memory = CudaMemory()
            if plan.keeps(plan.position(block), x.device):
                return plan.call_kept(block, x, cos, sin, mask)
        # The Function needs an input that requires grad, or autograd would never call its backward
        # (the first block's input, from frozen embeddings, does not); it remembers whether the
        # input really needed a gradient, so none is computed for such an input.
        needs = x.requires_grad
        if not needs:
            x = x.detach().requires_grad_(True)
        if mode is True or mode == "auto" or not x.is_cuda:  # nothing to offload to on CPU
            return _RecomputedBlock.apply(x, block, cos, sin, mask, needs)
        offloader = offloaders.get(x.device)
        if offloader is None:
            offloader = offloaders[x.device] = _Offloader(x.device)
        return _OffloadedBlock.apply(x, block, cos, sin, mask, offloader, needs)

    checkpointed.plan = plan
    return checkpointed
