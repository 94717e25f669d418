"""Fused linear cross-entropy benchmark: loris (chunked, Triton) vs reference (full logits) vs
torch.compile(reference), Llama heads (V=128256), frozen (LoRA) and trainable lm_head (GPU)."""

from __future__ import annotations

from typing import Any

import torch
from _common import BATCH, MODEL_SHAPES, SEQ, ensure_importable, main_for, measure


def run() -> list[dict[str, Any]]:
    ensure_importable()
    from loris.kernels.cross_entropy import linear_cross_entropy_reference, linear_cross_entropy_triton

    compiled = torch.compile(linear_cross_entropy_reference, dynamic=False)
    n = BATCH * SEQ
    rows = []
    cases = [
        ("llama-3.2-1b", True, 0.0),
        ("llama-3.2-1b", False, 0.0),
        ("llama-3.1-8b", False, 0.0),
        ("llama-3.1-8b", False, 0.5),
        ("llama-3.1-8b", True, 0.0),
    ]
    for name, train_head, ignored in cases:
        cfg = MODEL_SHAPES[name]
        gen = torch.Generator(device="cuda").manual_seed(0)
        h = torch.randn(
            n, cfg["hidden"], device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True
        )
        w = torch.randn(cfg["vocab"], cfg["hidden"], device="cuda", generator=gen) * cfg["hidden"] ** -0.5
        w = w.bfloat16().requires_grad_(train_head)
        labels = torch.randint(0, cfg["vocab"], (n,), device="cuda", generator=gen)
        labels[: int(n * ignored)] = -100  # a prompt share of the batch, as response-only SFT masks
        leaves = [h, w] if train_head else [h]
        providers = {
            "loris": lambda h=h, w=w, y=labels: linear_cross_entropy_triton(h, w, y),
            "reference": lambda h=h, w=w, y=labels: linear_cross_entropy_reference(h, w, y),
            "compiled": lambda h=h, w=w, y=labels: compiled(h, w, y),
        }
        shape = f"{name} ({n}x{cfg['hidden']}, V={cfg['vocab']}) head={'train' if train_head else 'frozen'}"
        if ignored:
            shape += f" ignored={ignored:.0%}"
        rows += measure("linear_cross_entropy", shape, providers, leaves=leaves)
        del h, w
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main_for(run)
