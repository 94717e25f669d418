"""Quantize and dequantize bitsandbytes NF4 weights, including double-quantized ("nested") block scales.

Layout (bitsandbytes ``quantize_4bit(..., quant_type="nf4")``): two 4-bit codes per byte, the high
nibble first; element ``i`` is ``code[nibble_i] * absmax[i // blocksize]``. With
``compress_statistics=True`` the per-block ``absmax`` is itself stored as uint8 codes of an 8-bit
dynamic map (``state2.code``) with one fp32 scale per ``state2.blocksize`` (256) scales, plus a
scalar ``offset`` (the mean that was subtracted before that second quantization):
``absmax[b] = state2.code[q[b]] * state2.absmax[b // 256] + offset``. All math is fp32 and the result
is cast once, as bitsandbytes does.

Quantizing is the inverse: per block, ``absmax`` is the largest magnitude, each element divided by it
(multiplied by its fp32 reciprocal, as bitsandbytes does) goes to the nearest code (ties to the lower
one), an odd element count is padded with the code of 0.0. The references below are the CPU path of
``loris.quant``: bitsandbytes' own CPU kernels depend on the host's instruction set (with AVX-512 bf16
its dequantize assumes blocks never straddle a row, and is wrong when they do).

The quant state is read by attribute (``absmax``, ``code``, ``blocksize``, ``state2``, ``offset``,
``dtype``, ``shape``), so this module needs no bitsandbytes import. The Triton kernel gives each
program whole quantization blocks: one scale load per block, then a contiguous interleaved store.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from loris.kernels import use_triton

try:  # triton is CUDA-only; the reference path must keep working without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None


def _packed_bytes(packed: torch.Tensor) -> torch.Tensor:
    """The packed codes as a flat uint8 tensor (bitsandbytes may store them in another dtype)."""
    flat = packed.reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def block_absmax_reference(quant_state: Any) -> torch.Tensor:
    """Per-block fp32 scales, decoding the nested (double) quantization when present."""
    absmax = quant_state.absmax
    state2 = getattr(quant_state, "state2", None)
    if state2 is None:
        return absmax.float()
    n = absmax.numel()
    scales2 = state2.absmax.float().repeat_interleave(state2.blocksize)[:n]
    decoded = state2.code.float()[absmax.reshape(-1).long()] * scales2
    return decoded + quant_state.offset.float()


def quantize_blockwise_reference(
    x: torch.Tensor, code: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax blockwise quantization of ``x`` (flattened) onto a sorted ``code`` in [-1, 1].

    Returns (int64 code indices, one per element, and fp32 absmax, one per block; the last block may
    be short). This is bitsandbytes' NF4 (``code`` = its 16 NF4 values, ``blocksize`` 64) and its
    8-bit dynamic blockwise quantization of the block scales (``code`` = the 256-entry dynamic map).
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    blocks = torch.nn.functional.pad(flat, (0, n_blocks * blocksize - n)).view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    inverse = 1.0 / absmax.clamp(min=1e-38)
    scaled = (blocks * inverse[:, None]).clamp(-1, 1).reshape(-1)[:n]
    code = code.to(device=flat.device, dtype=torch.float32)
    bounds = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, bounds), absmax


def pack_nibbles(codes: torch.Tensor, pad_code: int) -> torch.Tensor:
    """4-bit code indices -> bytes, high nibble first, as an ``(n_bytes, 1)`` uint8 column (the shape
    bitsandbytes stores); an odd count is padded with ``pad_code``."""
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), pad_code)])
    q = flat.to(torch.uint8)
    return ((q[0::2] << 4) | q[1::2]).unsqueeze(1)


def _check_nf4(quant_state: Any) -> None:
    quant_type = getattr(quant_state, "quant_type", "nf4")
    if quant_type != "nf4":
        raise ValueError(f"dequantize_nf4 handles quant_type 'nf4' only, got {quant_type!r}")


def dequantize_nf4_reference(
    packed: torch.Tensor, quant_state: Any, dtype: torch.dtype | None = None
) -> torch.Tensor:
    _check_nf4(quant_state)
    shape = tuple(quant_state.shape)
    n = math.prod(shape)
    data = _packed_bytes(packed)
    codes = torch.stack(((data >> 4), (data & 0xF)), dim=-1).reshape(-1)[:n].long()
    absmax = block_absmax_reference(quant_state)
    scales = absmax.repeat_interleave(quant_state.blocksize)[:n]
    out = quant_state.code.float()[codes] * scales
    return out.reshape(shape).to(dtype or quant_state.dtype)


if triton is not None:

    @triton.jit
    def _nf4_dequant_kernel(
        PACKED, CODE, ABSMAX, CODE2, ABSMAX2, OFFSET, OUT, n_out, n_blocks,
        BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr,
    ):  # fmt: skip
        blk = tl.program_id(0).to(tl.int64) * BLOCKS_PER_PROGRAM + tl.arange(0, BLOCKS_PER_PROGRAM)
        blk_mask = blk < n_blocks
        if NESTED:
            q = tl.load(ABSMAX + blk, mask=blk_mask, other=0).to(tl.int32)
            scale = tl.load(CODE2 + q) * tl.load(ABSMAX2 + blk // BLOCKSIZE2, mask=blk_mask, other=0.0)
            scale = scale + tl.load(OFFSET)
        else:
            scale = tl.load(ABSMAX + blk, mask=blk_mask, other=0.0).to(tl.float32)
        byte = (
            blk[:, None] * (BLOCKSIZE // 2) + tl.arange(0, BLOCKSIZE // 2)[None, :]
        )  # (blocks, bytes per block)
        n_bytes = (n_out + 1) // 2
        packed = tl.load(PACKED + byte, mask=byte < n_bytes, other=0).to(tl.int32)
        hi = tl.load(CODE + (packed >> 4)) * scale[:, None]
        lo = tl.load(CODE + (packed & 15)) * scale[:, None]
        vals = tl.interleave(hi, lo)  # element 2j <- high nibble of byte j, 2j + 1 <- low nibble
        elem = blk[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]
        tl.store(OUT + elem, vals.to(OUT.dtype.element_ty), mask=elem < n_out)


def dequantize_nf4_triton(
    packed: torch.Tensor, quant_state: Any, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The Triton path, callable directly (tests run it under ``TRITON_INTERPRET=1`` on CPU)."""
    _check_nf4(quant_state)
    shape = tuple(quant_state.shape)
    n = math.prod(shape)
    blocksize = int(quant_state.blocksize)
    if blocksize < 2 or blocksize & (blocksize - 1):
        raise ValueError(f"NF4 blocksize must be a power of two, got {blocksize}")
    device = packed.device
    data = _packed_bytes(packed)
    out = torch.empty(n, dtype=dtype or quant_state.dtype, device=device)
    n_blocks = triton.cdiv(n, blocksize)
    state2 = getattr(quant_state, "state2", None)
    code = quant_state.code.to(device=device, dtype=torch.float32)
    if state2 is not None:
        absmax = quant_state.absmax.reshape(-1)
        code2 = state2.code.to(device=device, dtype=torch.float32)
        absmax2 = state2.absmax.to(device=device, dtype=torch.float32)
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=device).reshape(1)
        blocksize2 = int(state2.blocksize)
    else:  # plain fp32 scales; the nested-only arguments are unused placeholders
        absmax = quant_state.absmax.reshape(-1)
        code2 = absmax2 = offset = code
        blocksize2 = 1
    blocks_per_program = max(1, min(triton.next_power_of_2(n_blocks), max(1, 4096 // blocksize)))
    if n > 0:
        _nf4_dequant_kernel[(triton.cdiv(n_blocks, blocks_per_program),)](
            data, code, absmax, code2, absmax2, offset, out, n, n_blocks,
            BLOCKSIZE=blocksize, BLOCKSIZE2=blocksize2, NESTED=state2 is not None,
            BLOCKS_PER_PROGRAM=blocks_per_program,
        )  # fmt: skip
    return out.reshape(shape)


def dequantize_nf4(packed: torch.Tensor, quant_state: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """NF4 (optionally double-quantized) -> ``dtype`` (default: the dtype that was quantized);
    Triton on CUDA, the reference elsewhere."""
    if use_triton(packed):
        return dequantize_nf4_triton(packed, quant_state, dtype)
    return dequantize_nf4_reference(packed, quant_state, dtype)
