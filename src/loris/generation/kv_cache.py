"""A preallocated key/value cache, one (batch, kv_heads, max_len, head_dim) pair per layer."""

from __future__ import annotations

import torch

from loris.models.config import ModelConfig


class KVCache:
    """Keys/values for every layer, written in place; ``length`` columns are filled.

    ``zero=True`` clears the buffers: the static decode step attends over every column (masked), and
    uninitialised memory could hold NaN, which a mask does not remove.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
        *,
        zero: bool = False,
    ):
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        alloc = torch.zeros if zero else torch.empty
        self.keys = [alloc(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.values = [alloc(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.max_len = max_len
        self.length = 0

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values at ``start`` and return everything cached so far."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this step needs {end}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def copy_repeated(self, source: KVCache, n: int) -> None:
        """Fill the first ``source.length`` columns with ``source``'s rows, each repeated ``n`` times
        (row i → rows i*n .. i*n+n-1): n samples per prompt share one prefill."""
        if source.batch * n != self.batch:
            raise ValueError(f"cache of batch {self.batch} cannot hold {source.batch} rows x {n}")
        length = source.length
        for dst, src in ((self.keys, source.keys), (self.values, source.values)):
            for d, s in zip(dst, src, strict=True):
                d[:, :, :length] = s[:, :, :length].repeat_interleave(n, dim=0)
        self.length = length
