"""NF4 (double-quantized) dequantization benchmark: loris Triton vs the torch reference vs its
torch.compile vs bitsandbytes' own CUDA kernel, on Llama-3.1-8B projection shapes (GPU)."""

from __future__ import annotations

from typing import Any

import torch
from _common import ensure_importable, main_for, measure

SHAPES = {
    "q_proj 4096x4096": (4096, 4096),
    "gate_proj 14336x4096": (14336, 4096),
    "down_proj 4096x14336": (4096, 14336),
}


def run() -> list[dict[str, Any]]:
    ensure_importable()
    import bitsandbytes.functional as bnbf

    from loris.kernels.nf4 import dequantize_nf4_reference, dequantize_nf4_triton

    compiled = torch.compile(dequantize_nf4_reference, dynamic=False)
    rows = []
    for name, shape in SHAPES.items():
        w = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True, blocksize=64)
        providers = {
            "loris": lambda p=packed, s=state: dequantize_nf4_triton(p, s, torch.bfloat16),
            "reference": lambda p=packed, s=state: dequantize_nf4_reference(p, s, torch.bfloat16),
            "compiled": lambda p=packed, s=state: compiled(p, s, torch.bfloat16),
            "bitsandbytes": lambda p=packed, s=state: bnbf.dequantize_4bit(p, s),
        }
        rows += measure("nf4_dequantize", f"llama-3.1-8b {name} bf16", providers, backward=False)
    return rows


if __name__ == "__main__":
    main_for(run)
