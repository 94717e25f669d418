"""A decode step with fixed shapes, so it can be captured once in a CUDA graph and replayed.

The model's own forward slices the cache to the filled length and builds masks from Python ints,
so every step has a new shape. Here every step attends over the whole preallocated cache with a
boolean mask held in a buffer, writes its key/value at a column index held in a tensor, and reads
token, position and rope tables from buffers: the same kernels run each step on the same memory.
The blocks themselves are the model's (`Block.forward`), so LoRA and 4-bit slots work unchanged.
Eager replays of this step are tested on CPU against the model's forward; graph capture runs only
on CUDA.
"""

from __future__ import annotations

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
    """

    def __init__(self, model, cache: KVCache, valid: torch.Tensor, *, cuda_graph: bool = False):
        device = valid.device
        if cuda_graph and device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device; use eager decoding on CPU")
        self.model, self.cache, self.cuda_graph = model, cache, cuda_graph
        b = valid.shape[0]
        self.valid = valid.clone().bool()
        self.tok = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.kv_idx = torch.arange(cache.max_len, device=device)
        self.writer = _ColumnWriter(cache, self.column)
        self.rope_bufs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.graph = None
        self.logits: torch.Tensor | None = None

    def _tables(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Rope cos/sin per layer for the current positions, computed eagerly (LongRoPE picks its
        factors from the length, a host-side decision) and copied into static buffers."""
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
                masks[window] = allowed[:, None, None, :]
            cos, sin = tables[i]
            x = block(x, cos, sin, masks[window], self.writer, 0)
        return model.logits_from_hidden(model.norm(x))[:, -1]

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, column: int) -> torch.Tensor:
        self.tok.copy_(tok.view(-1, 1))
        self.pos.copy_(pos)
        self.column.fill_(column)
        self.valid[:, column] = True
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
