"""The generation engine behind `generate`, `fast_generate`, `loris chat` and GRPO rollouts.

One call: left-pad the prompts, prefill them once into a cache sized to the prompts, copy that
cache ``n`` times into the decode cache (n samples per prompt share one prefill), then decode one
token per step for every row until each has hit an EOS id, a stop string or ``max_new_tokens``.
Rows that finished keep decoding padding (cheaper than reshaping the batch) and are masked out of
the result. The decode step is the model's forward (eager, the default on CPU) or a fixed-shape
step (`StaticDecodeStep`) that CUDA can capture in a graph.

Fixed-shape steps are kept for the model between calls (`_DecodeSteps`, in the engine's `_KEPT`, at most
``MAX_CACHED_STEPS``) with their decode cache and, on CUDA, their captured graph: a GRPO run
generates every step with new prompts of a slightly different length, and capturing a graph (and
allocating a cache) per call costs more than the decode itself. The cache length is rounded up to
``DECODE_BUCKET`` so those calls share one step; a reused step's cache and mask are refilled in
place. Adapter weights are read by the graph where they live: in-place updates (optimizer steps)
are seen, and the derived copies the fused LoRA kernels read (`loris.kernels.lora_fused.memo_on`)
are refreshed in place by each call's prefill, an eager forward through the same modules, before
the graph replays. `release_decode_steps` frees them.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from loris.generation.kv_cache import KVCache
from loris.generation.sampling import SamplingConfig, next_tokens
from loris.generation.static_step import StaticDecodeStep
from loris.generation.stop import StopStrings
from loris.models.generic import GenericCausalLM, GenericKVCache
from loris.models.state import unwrap_model

DECODE_BUCKET = 64
"""Fixed-shape decode caches hold ``prompt + max_new_tokens`` columns rounded up to a multiple of
this, so calls whose prompts differ by a few tokens reuse one step (and graph). The extra columns
are masked out; attending over them costs at most 63 columns per step."""

MAX_CACHED_STEPS = 4
"""Decode steps kept per model, least recently used dropped first: each holds a decode cache (rows x
bucket x layers) and, on CUDA, its graph's memory."""


@dataclass
class EngineOptions:
    """How to run, not what to sample. ``decode``: "auto" (CUDA graph on CUDA, eager elsewhere),
    "eager" (the model's forward), "static" (fixed-shape step, no graph) or "cuda_graph".
    ``merge_lora`` folds LoRA into a temporary copy of the model first (16-bit bases only)."""

    decode: str = "auto"
    merge_lora: bool = False
    check_every: int = 0  # steps between "all finished?" host checks; 0 = 1 on CPU, 8 on CUDA

    def __post_init__(self) -> None:
        if self.decode not in ("auto", "eager", "static", "cuda_graph"):
            raise ValueError(f"decode={self.decode!r}: choose auto, eager, static or cuda_graph")


@dataclass
class GenerationResult:
    """``tokens`` (rows, steps): new tokens, padding after each row's end; ``lengths``: real tokens
    per row (an EOS id is counted, a stop string's last token too); row r is prompt r // n."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    finish_reasons: list[str]
    n: int
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[list[int]]:
        return [t[:n].tolist() for t, n in zip(self.tokens, self.lengths.tolist(), strict=True)]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists → (ids, mask), left-padded to the longest."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def _merged_copy(model):
    """A copy of ``model`` with every LoRA update folded into its base weight."""
    from loris.lora import lora_modules

    clone = copy.deepcopy(model)
    for _, m in lora_modules(clone):
        if not m.disabled:
            m.merge()
    return clone


class _DecodeSteps:
    """One model's kept decode steps, by `_step_key`, least recently used first."""

    def __init__(self) -> None:
        self.steps: OrderedDict[tuple, StaticDecodeStep] = OrderedDict()

    def get(self, key: tuple) -> StaticDecodeStep | None:
        step = self.steps.get(key)
        if step is not None:
            self.steps.move_to_end(key)
        return step

    def put(self, key: tuple, step: StaticDecodeStep) -> None:
        """Keep ``step``; a kept step of the same kind whose tensors have moved is dropped (a
        graph would read the old addresses, and the model will not return to them)."""
        for stale in [k for k in self.steps if k[0] == key[0] and k[1] != key[1]]:
            del self.steps[stale]
        self.steps[key] = step
        self.steps.move_to_end(key)
        while len(self.steps) > MAX_CACHED_STEPS:
            self.steps.popitem(last=False)


_KEPT: weakref.WeakKeyDictionary[nn.Module, _DecodeSteps] = weakref.WeakKeyDictionary()
"""The engine's decode steps, per model. Held here, not on the model: a copy of the model
(deepcopy, pickling) starts with none, since a step points into its model's memory and holds a CUDA
graph; and a step refers to its model weakly, so the model's lifetime ends the entry's."""


def decode_steps(model) -> dict[tuple, StaticDecodeStep]:
    """The decode steps kept for ``model`` (a copy of the mapping, oldest use first); for tests."""
    kept = _KEPT.get(unwrap_model(model))
    return dict(kept.steps) if kept is not None else {}


def release_decode_steps(model) -> int:
    """Drop the decode steps (caches, CUDA graphs) kept for ``model``; returns how many there were.
    Their memory goes back to PyTorch's allocator; the next fixed-shape call builds a new step."""
    kept = _KEPT.pop(unwrap_model(model), None)
    return len(kept.steps) if kept is not None else 0


def _bucket(length: int) -> int:
    return -(-length // DECODE_BUCKET) * DECODE_BUCKET


def _step_key(model, rows: int, max_len: int, decode: str) -> tuple[tuple, tuple]:
    """(what the step is, where the tensors it reads are). The first part: shapes, dtype, device,
    mode, and the code path of each LoRA slot (off, merged, kernels; its scaling is a constant in a
    graph). The second: the addresses of every tensor a graph reads but the step does not own, the
    weights and the derived tensors modules keep (`loris.kernels.lora_fused.memo_on`): a moved or
    reloaded model, or a derived tensor rebuilt elsewhere, needs a new capture. Taken after the
    prefill, which refreshes those derived tensors."""
    from loris.kernels import kernels_disabled
    from loris.lora import lora_modules

    device = model.device
    autocast = torch.is_autocast_enabled(device.type)
    path = (
        tuple((m.disabled, m.merged, m.scaling) for _, m in lora_modules(model)),
        kernels_disabled(),
        model.training,
        autocast,
        torch.get_autocast_dtype(device.type) if autocast else None,
    )
    weights = itertools.chain(model.parameters(), model.buffers())
    held = (t for m in model.modules() for v in vars(m).values() for t in _held_tensors(v))
    storage = tuple(
        (t.data_ptr(), t.dtype, tuple(t.shape), t.requires_grad) for t in itertools.chain(weights, held)
    )
    return (rows, max_len, model.dtype, device, decode, path), storage


def _held_tensors(value) -> Iterator[torch.Tensor]:
    """Tensors in a module attribute that is a tensor or a (nested) tuple/list of them."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _held_tensors(v)


def _new_cache(model, rows: int, max_len: int, device: torch.device):
    """An empty KV cache for ``rows`` sequences of up to ``max_len`` tokens: loris' preallocated one,
    or transformers' own for a model on the generic path."""
    if isinstance(model, GenericCausalLM):
        return GenericKVCache(model.hf_model.config)
    return KVCache(model.config, rows, max_len, model.dtype, device)


@contextlib.contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _claim_step(model, rows: int, max_len: int, decode: str, keep: bool) -> StaticDecodeStep:
    """The model's kept step for this key, or a new one (kept when ``keep``); marked in use until
    its call ends, so two live calls (e.g. interleaved streams) never share a cache."""
    key = _step_key(model, rows, max_len, decode) if keep else None
    kept = _KEPT.get(model) if keep else None
    step = kept.get(key) if kept is not None else None
    if step is None or step.in_use:
        cache = KVCache(model.config, rows, max_len, model.dtype, model.device, zero=True)
        fresh = StaticDecodeStep(model, cache, cuda_graph=decode == "cuda_graph")
        if keep and step is None:
            if kept is None:
                kept = _KEPT.setdefault(model, _DecodeSteps())
            kept.put(key, fresh)
        step = fresh
    step.in_use = True
    return step


def iterate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    n: int = 1,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    stop: StopStrings | None = None,
    seed: int | None = None,
    options: EngineOptions | None = None,
    keep_step: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (this step's tokens (rows,), finished (rows,)) per decode step; the engine's core.

    ``input_ids`` (prompts, len) must be left-padded where lengths differ. A token yielded for a row
    that had already finished is ``pad_token_id``. ``keep_step``: keep a fixed-shape step on the
    model for later calls (False for a throwaway model, such as a merged copy).
    """
    sampling = sampling or SamplingConfig()
    options = options or EngineOptions()
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must both be >= 1")
    device = model.device
    ids = input_ids.to(device)
    b, plen = ids.shape
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device).long()
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("prompts are right-padded; pad on the left (tokenizer.padding_side = 'left')")
    decode = options.decode
    if decode == "auto":
        decode = "cuda_graph" if device.type == "cuda" else "eager"
    if isinstance(model, GenericCausalLM) or model.config.moe is not None:
        decode = "eager"  # transformers' modules, or data-dependent expert routing: no fixed-shape step
    rows = b * n
    total = plen + max_new_tokens
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
    check_every = options.check_every or (8 if device.type == "cuda" else 1)
    if stop:
        check_every = 1

    # Prefill once per distinct prompt, into a cache that fits just the prompts.
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    pre = _new_cache(model, b, plen, device)
    out = model(ids, attention_mask=mask, position_ids=positions, kv_cache=pre, logits_to_keep=1)
    step_fn = None
    if decode == "eager":
        cache = _new_cache(model, rows, total, device)
    else:
        step_fn = _claim_step(model, rows, _bucket(total), decode, keep_step)
        cache = step_fn.cache
    try:
        cache.copy_repeated(pre, n)  # in place; a reused cache's later columns are stale but masked
        del pre
        logits = out.logits[:, -1].repeat_interleave(n, dim=0)
        full_mask = torch.cat([mask, mask.new_ones(b, max_new_tokens)], 1).repeat_interleave(n, dim=0)
        pos = positions[:, -1:].repeat_interleave(n, dim=0) + 1
        seen = None
        if sampling.repetition_penalty != 1.0:
            seen = torch.empty(rows, total, dtype=torch.long, device=device)
            seen[:, :plen] = ids.repeat_interleave(n, dim=0)
        if step_fn is not None:
            valid = torch.zeros(rows, cache.max_len, dtype=torch.bool, device=device)
            valid[:, :plen] = mask.bool().repeat_interleave(n, dim=0)
            step_fn.reset(valid)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        texts: list[list[int]] = [[] for _ in range(rows)] if stop else []
        pad = torch.tensor(pad_token_id, device=device)
        for step in range(max_new_tokens):
            history = seen[:, : plen + step] if seen is not None else ids
            tok = next_tokens(logits, sampling, history, generator)
            tok = torch.where(finished, pad, tok)
            if seen is not None:
                seen[:, plen + step] = tok
            now_done = torch.isin(tok, eos) if eos.numel() else torch.zeros_like(finished)
            if stop:
                host = tok.tolist()
                done_host = finished.tolist()
                hits = []
                for r in range(rows):
                    if not done_host[r]:
                        texts[r].append(host[r])
                        hits.append(stop.hit(texts[r]))
                    else:
                        hits.append(False)
                now_done = now_done | torch.tensor(hits, device=device)
            now_done &= ~finished
            finished |= now_done
            yield tok, now_done
            if step == max_new_tokens - 1:
                break
            if (step + 1) % check_every == 0 and bool(finished.all()):
                break
            column = plen + step
            if step_fn is None:
                out = model(
                    tok[:, None],
                    attention_mask=full_mask[:, : column + 1],
                    position_ids=pos,
                    kv_cache=cache,
                )
                logits = out.logits[:, -1]
            else:
                logits = step_fn(tok, pos, column)
            pos = pos + 1
    finally:
        if step_fn is not None:
            step_fn.in_use = False


@torch.no_grad()  # not inference_mode: GRPO feeds these ids to a forward that keeps them for backward
def run(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    n: int = 1,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    stop: StopStrings | None = None,
    seed: int | None = None,
    options: EngineOptions | None = None,
    on_step=None,
) -> GenerationResult:
    """Generate for every prompt ``n`` times; see `iterate`. ``on_step(tokens, finished)`` streams."""
    import time

    options = options or EngineOptions()
    target = _merged_copy(model) if options.merge_lora else model
    device = model.device
    steps: list[torch.Tensor] = []
    dones: list[torch.Tensor] = []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    t_first = None
    with _eval_mode(target):
        it = iterate(
            target,
            input_ids,
            attention_mask,
            n=n,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_token_ids=eos_token_ids,
            pad_token_id=pad_token_id,
            stop=stop,
            seed=seed,
            options=options,
            keep_step=not options.merge_lora,  # the merged copy is dropped after this call
        )
        for tok, done in it:
            if t_first is None:
                sync()
                t_first = time.perf_counter()
            steps.append(tok)
            dones.append(done)
            if on_step is not None:
                on_step(tok, done)
    sync()
    t1 = time.perf_counter()
    tokens = torch.stack(steps, 1)
    done_at = torch.stack(dones, 1)  # a row is done at most once
    finished = done_at.any(1)
    lengths = torch.where(
        finished, done_at.int().argmax(1) + 1, torch.full_like(finished, tokens.shape[1], dtype=torch.long)
    )
    reasons = ["stop" if f else "length" for f in finished.tolist()]
    return GenerationResult(
        tokens=tokens,
        lengths=lengths,
        finish_reasons=reasons,
        n=n,
        prefill_seconds=(t_first or t1) - t0,
        decode_seconds=t1 - (t_first or t1),
        stats={"new_tokens": float(lengths.sum())},
    )
