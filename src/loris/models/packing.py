"""One weight buffer for the projections that read the same input: q/k/v, and gate/up.

After loading, the 16-bit weights of q_proj, k_proj and v_proj (and of gate_proj and up_proj) are
copied into one contiguous (sum of outputs, in) buffer, and each projection's weight becomes a view
of its rows. Nothing else changes: every module still has its own ``weight`` (LoRA wraps it, merges
write into it, exports read it). The fused paths in `loris.lora` then run one GEMM (one GEMV when
decoding) over the buffer instead of three or two.

No reference to the buffer is kept apart from the views: `packed_view` rebuilds the stacked view
each time from the projections' own weights, and only while they still lie back to back in one
storage (``model.to(...)`` or a reassigned weight quietly ends the packing; the per-projection path
takes over, and no second copy is left behind).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn


def _adjacent(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The tensors as one tensor concatenated along dim 0, if they already lie back to back in one
    storage (a view: nothing is copied); else None."""
    first = tensors[0]
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for t in tensors:
        if (
            t.requires_grad
            or t.dtype != first.dtype
            or not t.is_contiguous()
            or t.shape[1:] != first.shape[1:]
            or t.untyped_storage().data_ptr() != storage
            or t.storage_offset() != offset
        ):
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    return first.as_strided((rows, *first.shape[1:]), first.stride(), first.storage_offset())


def packed_view(linears: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of ``linears`` stacked, as views of the buffer `pack` made; None when they no
    longer lie back to back (after ``model.to(...)``, a reassigned weight, a trainable base, ...)."""
    if not all(type(lin) is nn.Linear for lin in linears):
        return None
    weight = _adjacent([lin.weight for lin in linears])
    if weight is None:
        return None
    biases = [lin.bias for lin in linears]
    if all(b is None for b in biases):
        return weight, None
    if any(b is None for b in biases):
        return None
    bias = _adjacent(biases)
    return None if bias is None else (weight, bias)


def _base_linear(m: nn.Module) -> nn.Module:
    return getattr(m, "base", m)


def pack(linears: Sequence[nn.Module]) -> bool:
    """Move ``linears``' weights (and biases) into one buffer, each keeping a view of its rows."""
    if not all(type(lin) is nn.Linear for lin in linears):  # quantized or custom slots stay apart
        return False
    ws = [lin.weight for lin in linears]
    if len({(w.dtype, w.device, w.shape[1]) for w in ws}) != 1 or any(
        w.requires_grad or w.is_meta for w in ws
    ):
        return False
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        return False
    with torch.no_grad():
        weight = torch.cat([w.detach() for w in ws])
        bias = torch.cat([lin.bias.detach() for lin in linears]) if all(has_bias) else None
    sizes = tuple(w.shape[0] for w in ws)
    start = 0
    for lin, n in zip(linears, sizes, strict=True):
        lin.weight = nn.Parameter(weight[start : start + n], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return True


def pack_projections(model: nn.Module) -> int:
    """Pack every attention's q/k/v and every MLP's gate/up; returns how many groups were packed.
    ``LORIS_PACK_PROJECTIONS=0`` keeps every weight apart (for side-by-side benchmarks)."""
    if os.environ.get("LORIS_PACK_PROJECTIONS", "1") == "0":
        return 0
    done = 0
    for block in getattr(model, "layers", []):
        attn, mlp = block.self_attn, block.mlp
        done += pack([_base_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
        if hasattr(mlp, "gate_proj"):  # a dense MLP (MoE layers stack their experts already)
            done += pack([_base_linear(m) for m in (mlp.gate_proj, mlp.up_proj)])
    return done
