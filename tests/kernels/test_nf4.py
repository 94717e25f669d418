"""NF4 dequantization (Triton and torch reference) vs a decoder written from the format (nf4_oracle).

bitsandbytes quantizes the inputs (its layout is the one to read) and, on CUDA, its dequantize is a
second oracle. Its CPU dequantize is not one: on AVX-512 bf16 hosts it is wrong whenever a block
straddles two rows (64x96 below), so CPU results are checked against the independent decoder only.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import interpreted

import nf4_oracle
from loris.kernels.nf4 import dequantize_nf4_reference, dequantize_nf4_triton

bnb_functional = pytest.importorskip("bitsandbytes.functional")

_interp = pytest.mark.skipif(not interpreted(), reason="CPU cases need TRITON_INTERPRET=1")
DEVICES = [
    pytest.param("cpu", id="cpu-interpret", marks=_interp),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]
# Shapes: odd element count (a padded last nibble and a short last block), > 256 blocks (two nested
# scale groups, the second partial), 1-D, one exactly 64 wide, and rows that are not multiples of 64
# or 128 with an even width, so blocks straddle rows (where bitsandbytes' AVX-512 CPU path fails).
SHAPES = [(37, 129), (129, 131), (1001,), (3, 64), (64, 96), (40, 72), (96, 200)]
# The kernel and bitsandbytes round identical fp32 products, but a GPU may contract the nested
# ``code2 * scale2 + offset`` into one FMA: allow a couple of ulps of the output dtype, plus a tiny
# absolute slack for blocks whose scale nearly cancels the offset (the FMA's difference is an ulp of
# the offset, not of the small result).
TOL = {torch.float32: 1e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}


def _quantize(shape: tuple[int, ...], device: str, src_dtype: torch.dtype, nested: bool):
    gen = torch.Generator().manual_seed(sum(shape))
    w = (torch.randn(shape, generator=gen) * torch.rand(shape[-1], generator=gen) * 0.1).to(device, src_dtype)
    return bnb_functional.quantize_4bit(w, quant_type="nf4", compress_statistics=nested, blocksize=64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "fp32-absmax"])
def test_dequantize_nf4_matches_the_format(
    device: str, dtype: torch.dtype, shape: tuple[int, ...], nested: bool
) -> None:
    packed, state = _quantize(shape, device, dtype, nested)
    assert state.nested == nested
    expected = nf4_oracle.dequantize(packed, state).to(device, dtype)
    if device == "cuda":  # bitsandbytes' CUDA dequantize agrees with the format
        torch.testing.assert_close(
            bnb_functional.dequantize_4bit(packed, state), expected, rtol=TOL[dtype], atol=0
        )
    for fn in (dequantize_nf4_triton, dequantize_nf4_reference):
        out = fn(packed, state, dtype)
        assert out.dtype == dtype and out.shape == shape
        torch.testing.assert_close(
            out,
            expected,
            rtol=TOL[dtype],
            atol=1e-6 * expected.abs().max().item(),
            msg=lambda m, f=fn: f"{f.__name__}: {m}",
        )


@pytest.mark.parametrize("device", DEVICES)
def test_dequantize_nf4_to_another_dtype(device: str) -> None:
    """A bf16 weight dequantized to fp32 is the format's fp32 value, before any cast to bf16."""
    packed, state = _quantize((33, 70), device, torch.bfloat16, nested=True)
    ours = dequantize_nf4_triton(packed, state, torch.float32)
    want = nf4_oracle.dequantize(packed, state).to(device)
    torch.testing.assert_close(ours, want, rtol=TOL[torch.float32], atol=0)
    torch.testing.assert_close(ours.bfloat16(), want.bfloat16(), rtol=TOL[torch.bfloat16], atol=0)
    torch.testing.assert_close(
        ours, dequantize_nf4_reference(packed, state, torch.float32), rtol=1e-6, atol=0
    )
    assert dequantize_nf4_triton(packed, state).dtype == torch.bfloat16  # default: the quantized dtype


def test_dequantize_nf4_rejects_fp4() -> None:
    packed, state = bnb_functional.quantize_4bit(torch.randn(8, 64), quant_type="fp4", blocksize=64)
    with pytest.raises(ValueError, match="nf4"):
        dequantize_nf4_reference(packed, state)
