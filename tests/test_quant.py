"""`Linear4bit.dequantize`: loris' Triton NF4 kernel wherever Triton runs, bitsandbytes elsewhere."""

from __future__ import annotations

import os

import pytest
import torch

from loris import quant

bnb_functional = pytest.importorskip("bitsandbytes.functional")


@pytest.mark.parametrize("kernel", [True, False], ids=["triton", "bitsandbytes"])
def test_linear4bit_dequantize_matches_bitsandbytes(kernel, monkeypatch):
    """Both paths give bitsandbytes' weights; the kernel path really runs the kernel (on CPU under
    TRITON_INTERPRET=1, as the conftest sets it without a GPU)."""
    from loris.kernels import nf4

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and kernel and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel needs a GPU or TRITON_INTERPRET=1")
    calls = []
    real = nf4.dequantize_nf4_triton
    if device == "cpu" or not kernel:
        monkeypatch.setattr(quant, "use_triton", lambda x: kernel)
    monkeypatch.setattr(quant, "dequantize_nf4_triton", lambda *a: calls.append(1) or real(*a))
    w = torch.randn(40, 72, generator=torch.Generator().manual_seed(0)).to(device)
    lin = quant.Linear4bit.from_float(w)
    want = bnb_functional.dequantize_4bit(lin.weight, lin.quant_state)
    got = lin.dequantize(torch.float32)
    assert got.dtype == torch.float32 and calls == ([1] if kernel else [])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
