"""Residual add + RMSNorm benchmark: loris' fused kernel vs the add followed by loris' RMSNorm vs the
reference vs torch.compile(reference), Llama shapes (GPU)."""

from __future__ import annotations

from typing import Any

import torch
from _common import BATCH, MODEL_SHAPES, SEQ, ensure_importable, main_for, measure


def run() -> list[dict[str, Any]]:
    ensure_importable()
    from loris.kernels.add_rms_norm import add_rms_norm_reference, add_rms_norm_triton
    from loris.kernels.rms_norm import rms_norm_triton

    def unfused(x, h, w):
        s = x + h
        return s, rms_norm_triton(s, w, 1e-6)

    compiled = torch.compile(add_rms_norm_reference, dynamic=False)
    rows = []
    for name, cfg in MODEL_SHAPES.items():
        x, h = (
            torch.randn(BATCH * SEQ, cfg["hidden"], device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2)
        )
        w = torch.randn(cfg["hidden"], device="cuda", dtype=torch.bfloat16)  # frozen, as under LoRA
        providers = {
            "loris": lambda x=x, h=h, w=w: add_rms_norm_triton(x, h, w, 1e-6),
            "add + loris rms_norm": lambda x=x, h=h, w=w: unfused(x, h, w),
            "reference": lambda x=x, h=h, w=w: add_rms_norm_reference(x, h, w, 1e-6),
            "compiled": lambda x=x, h=h, w=w: compiled(x, h, w, 1e-6),
        }
        rows += measure("add_rms_norm", f"{name} ({BATCH * SEQ}x{cfg['hidden']})", providers, leaves=[x, h])
    return rows


if __name__ == "__main__":
    main_for(run)
