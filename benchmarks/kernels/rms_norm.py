"""RMSNorm benchmark: loris Triton vs reference vs torch.compile(reference), Llama shapes (GPU)."""

from __future__ import annotations

from typing import Any

import torch
from _common import BATCH, MODEL_SHAPES, SEQ, ensure_importable, main_for, measure


def run() -> list[dict[str, Any]]:
    ensure_importable()
    from loris.kernels.rms_norm import rms_norm_reference, rms_norm_triton

    compiled = torch.compile(rms_norm_reference, dynamic=False)
    rows = []
    cases = [(name, cfg, 0.0) for name, cfg in MODEL_SHAPES.items()] + [
        ("llama-3.1-8b", MODEL_SHAPES["llama-3.1-8b"], 1.0)
    ]
    for name, cfg, offset in cases:
        x = torch.randn(BATCH * SEQ, cfg["hidden"], device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(cfg["hidden"], device="cuda", dtype=torch.bfloat16, requires_grad=True)
        providers = {
            "loris": lambda x=x, w=w, o=offset: rms_norm_triton(x, w, 1e-6, o),
            "reference": lambda x=x, w=w, o=offset: rms_norm_reference(x, w, 1e-6, o),
            "compiled": lambda x=x, w=w, o=offset: compiled(x, w, 1e-6, o),
        }
        shape = f"{name} ({BATCH * SEQ}x{cfg['hidden']}) offset={offset:g}"
        rows += measure("rms_norm", shape, providers, leaves=[x, w])
    return rows


if __name__ == "__main__":
    main_for(run)
