"""NF4 in `loris.quant`: quantize and dequantize give bitsandbytes' layout on every host.

Off CUDA loris does the NF4 math itself, so these run on any CPU; the oracle is `nf4_oracle` (the
format written out element by element), bitsandbytes only where its result is known right: its
torch ("default") 4-bit quantizer, which is what it runs on CPU, and its CUDA kernels.
"""

from __future__ import annotations

import os

import pytest
import torch

import nf4_oracle
from loris import quant

bnb_functional = pytest.importorskip("bitsandbytes.functional")

# Rows and columns that are not multiples of 64 or 128 (blocks straddle rows), an odd count (a padded
# nibble, a short last block), 1-D, and > 256 blocks (two groups of nested scales, one partial).
SHAPES = [(64, 96), (40, 72), (96, 200), (37, 129), (7, 5), (1001,), (300, 200)]


def _weight(shape, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=gen) * torch.rand(shape[-1], generator=gen) * 0.1
    return w.to(device, dtype)


def _nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    data = packed.reshape(-1).view(torch.uint8).cpu().long()
    return torch.stack((data >> 4, data & 0xF), dim=1).reshape(-1)[:n]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_nf4_picks_the_nearest_codes_in_bitsandbytes_layout(shape, dtype, monkeypatch):
    w = _weight(shape, dtype)
    monkeypatch.setattr(bnb_functional, "quantize_4bit", _not_on_cpu)
    packed, state = quant.quantize_nf4(w)
    monkeypatch.undo()
    n = w.numel()
    assert packed.dtype == torch.uint8 and packed.shape == ((n + 1) // 2, 1)
    assert tuple(state.shape) == shape and state.dtype == dtype and state.blocksize == 64
    assert state.nested and state.state2.blocksize == 256 and state.absmax.dtype == torch.uint8
    # the oracle: per 64-element block, each element scaled by 1/absmax goes to the nearest NF4 code
    flat = w.reshape(-1).float()
    blocks = torch.nn.functional.pad(flat, (0, -n % 64)).view(-1, 64)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax)[:, None]).reshape(-1)[:n]
    assert torch.equal(_nibbles(packed, n), nf4_oracle.nearest_codes(scaled, nf4_oracle.NF4))
    if n % 2:
        assert packed.reshape(-1)[-1].item() & 0xF == 7  # the pad nibble is NF4's 0.0, as bitsandbytes
    # nested scales: mean offset, 256-scale groups, each scale the nearest dynamic-map code
    offset = absmax.mean()
    torch.testing.assert_close(state.offset, offset, rtol=0, atol=0)
    centred = torch.nn.functional.pad(absmax - offset, (0, -absmax.numel() % 256)).view(-1, 256)
    absmax2 = centred.abs().amax(dim=1)
    torch.testing.assert_close(state.state2.absmax, absmax2, rtol=0, atol=0)
    q_want = nf4_oracle.nearest_codes(  # an all-zero group (a single scale) codes as 0.0
        (centred * (1.0 / absmax2.clamp(min=1e-38))[:, None]).reshape(-1)[: absmax.numel()], state.state2.code
    )
    assert torch.equal(state.absmax.long(), q_want)
    # bitsandbytes' own 4-bit quantizer (torch code on CPU) writes the same bytes and fp32 scales
    bnb_packed, bnb_state = bnb_functional.quantize_4bit(
        w, blocksize=64, compress_statistics=False, quant_type="nf4", quant_storage=torch.uint8
    )
    assert torch.equal(packed, bnb_packed) and torch.equal(absmax, bnb_state.absmax)
    # and what is written decodes to the weight (NF4's error, not garbage)
    deq = nf4_oracle.dequantize(packed, state)
    assert ((deq - w.float()).norm() / w.float().norm()).item() < 0.12


def _not_on_cpu(*args, **kwargs):
    raise AssertionError("bitsandbytes' CPU NF4 kernels were called; loris' own must run off CUDA")


@pytest.mark.parametrize("shape", SHAPES)
def test_linear4bit_on_cpu_never_calls_bitsandbytes_kernels_and_matches_the_format(shape, monkeypatch):
    for name in ("quantize_4bit", "dequantize_4bit", "quantize_blockwise", "dequantize_blockwise"):
        monkeypatch.setattr(bnb_functional, name, _not_on_cpu)
    monkeypatch.setattr(quant, "use_triton", lambda x: False)
    w = _weight(shape if len(shape) == 2 else (1, shape[0]))
    lin = quant.Linear4bit.from_float(w)
    want = nf4_oracle.dequantize(lin.weight, lin.quant_state)
    for dtype in (torch.float32, torch.bfloat16):
        got = lin.dequantize(dtype)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0)


@pytest.mark.gpu
def test_quantize_nf4_on_cpu_writes_the_bytes_bitsandbytes_writes_on_cuda():
    for shape in SHAPES:
        w = _weight(shape, torch.bfloat16)
        packed, state = quant.quantize_nf4(w)
        cuda_packed, cuda_state = bnb_functional.quantize_4bit(
            w.cuda(), blocksize=64, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8
        )
        assert torch.equal(packed, cuda_packed.cpu())
        assert torch.equal(state.absmax, cuda_state.absmax.cpu())
        torch.testing.assert_close(state.state2.absmax, cuda_state.state2.absmax.cpu())


@pytest.mark.parametrize(
    "path",
    [
        "triton",
        "reference",
        pytest.param("bitsandbytes", marks=pytest.mark.gpu),
    ],
)
def test_linear4bit_dequantize_paths_match_the_format(path, monkeypatch):
    """Each path gives the format's weights; the kernel path really runs the kernel (on CPU under
    TRITON_INTERPRET=1, as the conftest sets it without a GPU)."""
    from loris.kernels import nf4

    device = "cuda" if path == "bitsandbytes" or torch.cuda.is_available() else "cpu"
    if path == "reference":
        device = "cpu"
    if device == "cpu" and path == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel needs a GPU or TRITON_INTERPRET=1")
    calls = []
    real = nf4.dequantize_nf4_triton
    monkeypatch.setattr(quant, "use_triton", lambda x: path == "triton")
    monkeypatch.setattr(quant, "dequantize_nf4_triton", lambda *a: calls.append(1) or real(*a))
    lin = quant.Linear4bit.from_float(_weight((40, 72), device=device))
    want = nf4_oracle.dequantize(lin.weight, lin.quant_state).to(device)
    got = lin.dequantize(torch.float32)
    assert got.dtype == torch.float32 and calls == ([1] if path == "triton" else [])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
