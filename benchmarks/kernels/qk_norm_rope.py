"""Per-head q/k RMSNorm + rope benchmark (Qwen3-1.7B and Gemma-3 head layouts): loris' fused kernel
vs loris' separate norm and rope kernels vs the reference vs torch.compile(reference) (GPU)."""

from __future__ import annotations

from typing import Any

import torch
from _common import BATCH, SEQ, ensure_importable, main_for, measure

SHAPES = {"qwen3-1.7b": (16, 8, 128, 0.0), "gemma-3-4b": (8, 4, 256, 1.0)}  # q heads, kv heads, dim, offset


def run() -> list[dict[str, Any]]:
    ensure_importable()
    from loris.kernels.qk_norm_rope import qk_norm_rope_reference, qk_norm_rope_triton
    from loris.kernels.rms_norm import rms_norm_triton
    from loris.kernels.rope import apply_rope_triton

    def unfused(q, k, wq, wk, eps, offset, cos, sin):
        qn = rms_norm_triton(q, wq, eps, offset).transpose(1, 2)
        kn = rms_norm_triton(k, wk, eps, offset).transpose(1, 2)
        return apply_rope_triton(qn, kn, cos, sin)

    compiled = torch.compile(qk_norm_rope_reference, dynamic=False)
    rows = []
    for name, (hq, hk, d, offset) in SHAPES.items():
        # q and k as views of one packed q|k|v projection output, as the model hands them over
        qkv = torch.randn(
            BATCH, SEQ, (hq + 2 * hk) * d, device="cuda", dtype=torch.bfloat16, requires_grad=True
        )
        q = qkv[..., : hq * d].view(BATCH, SEQ, hq, d)
        k = qkv[..., hq * d : (hq + hk) * d].view(BATCH, SEQ, hk, d)
        wq, wk = (torch.randn(d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        angles = torch.arange(SEQ, device="cuda")[:, None] * torch.rand(d // 2, device="cuda")
        cos = angles.cos().repeat(1, 2).expand(BATCH, SEQ, d).to(torch.bfloat16)
        sin = angles.sin().repeat(1, 2).expand(BATCH, SEQ, d).to(torch.bfloat16)
        args = (q, k, wq, wk, 1e-6, offset, cos, sin)
        providers = {
            "loris": lambda a=args: qk_norm_rope_triton(*a),
            "loris norm + rope": lambda a=args: unfused(*a),
            "reference": lambda a=args: qk_norm_rope_reference(*a),
            "compiled": lambda a=args: compiled(*a),
        }
        rows += measure(
            "qk_norm_rope", f"{name} ({BATCH}x{SEQ}, {hq}/{hk} heads x {d})", providers, leaves=[qkv]
        )
    return rows


if __name__ == "__main__":
    main_for(run)
