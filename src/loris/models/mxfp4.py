"""MXFP4 expert weights (gpt-oss Hub checkpoints), dequantized while loading.

OCP's MX format: values in blocks of 32 share one scale. A weight ``W`` of shape (..., rows, cols)
is stored as ``W_blocks`` (..., rows, cols / 32, 16) uint8, two 4-bit E2M1 codes per byte (the low
nibble is the earlier value), and ``W_scales`` (..., rows, cols / 32) uint8, an E8M0 exponent with
bias 127: value = E2M1(code) · 2^(scale − 127).

gpt-oss stores each expert stack packed as (experts, out, in) while transformers (and loris) hold
it as (experts, in, out), so the dequantized stack is transposed. `dequantize_mxfp4_tensors` wraps a
checkpoint's tensor stream: it pairs each ``*_blocks`` with its ``*_scales`` and yields the
dequantized weight under the name without the suffix; every other tensor passes through.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
"""The 16 values of a 4-bit E2M1 code (sign bit, 2 exponent bits, 1 mantissa bit)."""
SCALE_BIAS = 127
BLOCK = 32


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``blocks`` (..., rows, groups, 16) uint8 and ``scales`` (..., rows, groups) uint8 → the
    (..., rows, groups · 32) weight in ``dtype``."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not pair: expected "
            "blocks (..., rows, groups, 16) and scales (..., rows, groups)"
        )
    table = torch.tensor(E2M1_VALUES, dtype=dtype, device=blocks.device)
    codes = blocks.to(torch.uint8)
    values = torch.stack([table[(codes & 0x0F).long()], table[(codes >> 4).long()]], dim=-1)
    values = values.flatten(-2)  # (..., rows, groups, 32): low nibble first
    exponent = scales.to(torch.int32) - SCALE_BIAS
    out = torch.ldexp(values, exponent[..., None].to(dtype))
    return out.flatten(-2)


def dequantize_expert_stack(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A packed (experts, out, in) stack → the (experts, in, out) weight, one expert at a time (a
    gpt-oss-120b layer would otherwise need several GB of temporaries)."""
    first = dequantize_mxfp4(blocks[0], scales[0], dtype)
    out = torch.empty(blocks.shape[0], first.shape[1], first.shape[0], dtype=dtype, device=blocks.device)
    out[0] = first.t()
    for e in range(1, blocks.shape[0]):
        out[e] = dequantize_mxfp4(blocks[e], scales[e], dtype).t()
    return out


def dequantize_mxfp4_tensors(
    tensors: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """A checkpoint's (name, tensor) stream with every ``X_blocks`` / ``X_scales`` pair replaced by
    the dequantized expert stack ``X``."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        for suffix in ("_blocks", "_scales"):
            if name.endswith(suffix):
                base = name.removesuffix(suffix)
                parts = pending.setdefault(base, {})
                parts[suffix] = tensor
                if len(parts) == 2:
                    del pending[base]
                    yield base, dequantize_expert_stack(parts["_blocks"], parts["_scales"], dtype)
                break
        else:
            yield name, tensor
    if pending:
        missing = ", ".join(f"{b} (has only {next(iter(p))})" for b, p in sorted(pending.items()))
        raise ValueError(f"MXFP4 checkpoint is incomplete: {missing[:300]}")
