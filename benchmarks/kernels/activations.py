"""SwiGLU / GeGLU(tanh) benchmark: loris Triton vs reference vs torch.compile(reference) (GPU)."""

from __future__ import annotations

from typing import Any

import torch
from _common import BATCH, MODEL_SHAPES, SEQ, ensure_importable, main_for, measure


def run() -> list[dict[str, Any]]:
    ensure_importable()
    from loris.kernels.activations import (
        geglu_tanh_reference,
        geglu_tanh_triton,
        swiglu_reference,
        swiglu_triton,
    )

    rows = []
    for op, fused, ref in (
        ("swiglu", swiglu_triton, swiglu_reference),
        ("geglu_tanh", geglu_tanh_triton, geglu_tanh_reference),
    ):
        compiled = torch.compile(ref, dynamic=False)
        for name, cfg in MODEL_SHAPES.items():
            gate = torch.randn(
                BATCH * SEQ, cfg["intermediate"], device="cuda", dtype=torch.bfloat16, requires_grad=True
            )
            up = torch.randn_like(gate, requires_grad=True)
            providers = {
                "loris": lambda g=gate, u=up, f=fused: f(g, u),
                "reference": lambda g=gate, u=up, f=ref: f(g, u),
                "compiled": lambda g=gate, u=up, f=compiled: f(g, u),
            }
            rows += measure(op, f"{name} ({BATCH * SEQ}x{cfg['intermediate']})", providers, leaves=[gate, up])
    return rows


if __name__ == "__main__":
    main_for(run)
