"""RoPE benchmark (q and k together): loris Triton vs reference vs torch.compile(reference) (GPU).

q and k are laid out as the attention projections produce them, (B, L, H, D) viewed as (B, H, L, D).
"""

from __future__ import annotations

from typing import Any

import torch
from _common import BATCH, MODEL_SHAPES, SEQ, ensure_importable, main_for, measure


def _tables(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (500000 ** (torch.arange(0, dim, 2, device="cuda").float() / dim))
    pos = torch.arange(SEQ, device="cuda").float().expand(BATCH, SEQ)
    emb = torch.cat([pos[..., None] * inv_freq] * 2, dim=-1)
    return emb.cos().bfloat16(), emb.sin().bfloat16()


def run() -> list[dict[str, Any]]:
    ensure_importable()
    from loris.kernels.rope import apply_rope_reference, apply_rope_triton

    compiled = torch.compile(apply_rope_reference, dynamic=False)
    rows = []
    for name, cfg in MODEL_SHAPES.items():
        d, hq, hk = cfg["head_dim"], cfg["q_heads"], cfg["kv_heads"]
        q = (
            torch.randn(BATCH, SEQ, hq, d, device="cuda", dtype=torch.bfloat16)
            .transpose(1, 2)
            .requires_grad_()
        )
        k = (
            torch.randn(BATCH, SEQ, hk, d, device="cuda", dtype=torch.bfloat16)
            .transpose(1, 2)
            .requires_grad_()
        )
        cos, sin = _tables(d)
        providers = {
            "loris": lambda q=q, k=k, c=cos, s=sin: apply_rope_triton(q, k, c, s),
            "reference": lambda q=q, k=k, c=cos, s=sin: apply_rope_reference(q, k, c, s),
            "compiled": lambda q=q, k=k, c=cos, s=sin: compiled(q, k, c, s),
        }
        rows += measure("rope", f"{name} (B{BATCH} L{SEQ} Hq{hq} Hk{hk} D{d})", providers, leaves=[q, k])
    return rows


if __name__ == "__main__":
    main_for(run)
