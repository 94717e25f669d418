"""A decode step with fixed shapes, so it can be captured once in a CUDA graph and replayed.

The model's own forward slices the cache to the filled length and builds masks from Python ints,
so every step has a new shape. Here every step attends over the whole preallocated cache with a
boolean mask held in a buffer, writes its key/value at a column index held in a tensor, and reads
token, position and rope tables from buffers: the same kernels run each step on the same memory.
The blocks themselves are the model's (`Block.forward`), so LoRA and 4-bit slots work unchanged.
Eager replays of this step are tested on CPU against the model's forward; graph capture runs only
on CUDA.

A step outlives one generation call: the engine keeps it (see `loris.generation.engine`) and
`reset` refills its valid-column mask in place for the next prompts, so a captured graph, which
holds the addresses of these buffers, replays unchanged.
"""

from __future__ import annotations

import weakref

import torch

from loris.generation.kv_cache import KVCache


class _ColumnWriter:
    """Looks like a KVCache to `Attention.forward`: writes at a tensor column, returns full buffers."""

    def __init__(self, cache: KVCache, column: torch.Tensor):
        self.cache, self.column = cache, column

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_copy_(2, self.column, k)
        values.index_copy_(2, self.column, v)
        return keys, values


class StaticDecodeStep:
    """One-token decode over ``cache`` for every row; ``valid`` (batch, max_len) marks real columns.

    Call with the step's tokens (batch,), positions (batch, 1) and cache column (an int); returns
    last-position logits (batch, vocab). With ``cuda_graph=True`` the first call captures a graph
    and later calls replay it; the returned logits tensor is then reused by the next call.
    ``valid`` may be given later (or again, for new prompts in the same cache) through `reset`.
    """

    def __init__(self, model, cache: KVCache, valid: torch.Tensor | None = None, *, cuda_graph: bool = False):
        device = cache.keys[0].device
        if cuda_graph and device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device; use eager decoding on CPU")
        # Weakly: the engine keeps steps per model (`loris.generation.engine`), and a strong
        # reference back would keep every model that ever generated alive.
        self._model = weakref.ref(model)
        self.cache, self.cuda_graph = cache, cuda_graph
        b = cache.batch
        self.valid = torch.zeros(b, cache.max_len, dtype=torch.bool, device=device)
        if valid is not None:
            self.reset(valid)
        self.tok = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.kv_idx = torch.arange(cache.max_len, device=device)
        self.writer = _ColumnWriter(cache, self.column)
        self.rope_bufs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.full_tables = self._full_tables(model, cache.max_len, device)
        # Additive float masks spare SDPA a bool->float conversion per layer; soft-capped attention
        # (Gemma 2) masks its scores itself and takes the bool mask.
        self.float_mask = model.config.attn_logit_softcap is None
        self.graph = None
        self.logits: torch.Tensor | None = None
        self.in_use = False  # set by the engine while a generation call decodes with this step

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("this decode step's model no longer exists")
        return model

    def reset(self, valid: torch.Tensor) -> None:
        """Mark the columns the next decode may attend to (batch, max_len): the prompts' real
        columns, nothing after them. Copied in place: a captured graph reads this very buffer."""
        if valid.shape != self.valid.shape:
            raise ValueError(
                f"valid mask of shape {tuple(valid.shape)} for a step over {tuple(self.valid.shape)}"
            )
        self.valid.copy_(valid)

    @staticmethod
    def _full_tables(model, max_len: int, device) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
        """The model's per-layer cos/sin for every cache position (layers sharing a rope share the
        tensors), gathered inside the step by position. None for ropes whose tables depend on the
        sequence length (dynamic NTK, LongRoPE)."""
        cfg = model.config
        if any(cfg.rope_for_layer(i).rope_type in ("dynamic", "longrope") for i in range(cfg.num_layers)):
            return None
        return model._rope_tables(torch.arange(max_len, device=device)[None], model.dtype)

    def _gathered_tables(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        b, idx = self.pos.shape[0], self.pos.view(-1)
        gathered: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        out = {}
        for layer, (cos, sin) in self.full_tables.items():
            if id(cos) not in gathered:  # once per distinct rope
                gathered[id(cos)] = (
                    cos[0].index_select(0, idx).view(b, 1, -1),
                    sin[0].index_select(0, idx).view(b, 1, -1),
                )
            out[layer] = gathered[id(cos)]
        return out

    def _tables(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
        """Rope cos/sin per layer for the current positions, computed eagerly (LongRoPE picks its
        factors from the length, a host-side decision) and copied into static buffers; None when
        the step gathers them from the precomputed tables itself."""
        if self.full_tables is not None:
            return None
        fresh = self.model._rope_tables(self.pos, self.model.dtype)
        out = {}
        for layer, (cos, sin) in fresh.items():
            key = id(self.model.config.rope_for_layer(layer))
            if key not in self.rope_bufs:
                self.rope_bufs[key] = (torch.empty_like(cos), torch.empty_like(sin))
            bc, bs = self.rope_bufs[key]
            bc.copy_(cos)
            bs.copy_(sin)
            out[layer] = (bc, bs)
        return out

    def _forward(self, tables) -> torch.Tensor:
        model, cfg = self.model, self.model.config
        self.valid.index_fill_(1, self.column, True)
        if tables is None:
            tables = self._gathered_tables()
        x = model.embed_tokens(self.tok)
        if cfg.embed_scale != 1.0:
            x = x * torch.tensor(cfg.embed_scale, dtype=x.dtype)
        masks: dict[int | None, torch.Tensor] = {}
        for i, block in enumerate(model.layers):
            window = cfg.sliding_window if cfg.is_sliding(i) else None
            if window not in masks:
                allowed = self.valid
                if window is not None:
                    allowed = allowed & (self.kv_idx > self.column - window)[None, :]
                allowed = allowed[:, None, None, :]
                if self.float_mask:
                    allowed = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(
                        ~allowed, float("-inf")
                    )
                masks[window] = allowed
            cos, sin = tables[i]
            x = block(x, cos, sin, masks[window], self.writer, 0)
        return model.logits_from_hidden(model.norm(x))[:, -1]

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, column: int) -> torch.Tensor:
        self.tok.copy_(tok.view(-1, 1))
        self.pos.copy_(pos)
        self.column.fill_(column)
        tables = self._tables()
        if not self.cuda_graph:
            return self._forward(tables)
        if self.graph is None:
            self._capture(tables)
        self.graph.replay()
        return self.logits

    def _capture(self, tables) -> None:
        # Warm-up on a side stream (lazy inits, autotuning) before capture, as CUDA graphs require.
        # Warm-up and replay both write this step's key/value at the same column: same values.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(tables)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._forward(tables)
        self.graph = graph
