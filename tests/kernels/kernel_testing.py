"""Shared parametrisation and comparisons for the kernel parity tests.

CPU cases run the Triton kernels under ``TRITON_INTERPRET=1`` (set by this directory's conftest) in
fp32 and compare tightly with the reference. CUDA cases (marked ``gpu``) also cover bf16/fp16: there
the kernel must be at least about as close to an fp32 "gold" run of the reference as the reference
itself is when run in the low precision.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_needs_interpreter = pytest.mark.skipif(not interpreted(), reason="CPU cases need TRITON_INTERPRET=1")

CASES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32-interpret", marks=_needs_interpreter),
    pytest.param("cuda", torch.float32, id="cuda-fp32", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=pytest.mark.gpu),
]

# Absolute error floor, relative to the largest gold magnitude, when judging low-precision results.
_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


# Direct kernel-vs-reference closeness where both run in the same dtype (a rounding flip is 1 ulp).
SAME_DTYPE_TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 2e-2, "atol": 1e-2},
    torch.float16: {"rtol": 2e-3, "atol": 1e-3},
}


def forward_backward(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor] | None = None,
    *,
    seed: int = 0,
    **kwargs: object,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Run ``fn`` on fresh leaf copies of ``inputs``; return outputs and the input gradients.

    Each output gets a fixed random upstream gradient (so every gradient path is exercised), drawn
    from ``seed`` unless ``grad_outputs`` is given.
    """
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves, **kwargs)
    outs = list(out) if isinstance(out, tuple) else [out]
    if grad_outputs is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        grad_outputs = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
    if any(leaf.requires_grad for leaf in leaves):
        torch.autograd.backward(outs, list(grad_outputs))
    return [o.detach() for o in outs], [leaf.grad for leaf in leaves]


def upcast(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().float().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in ts]


def assert_matches(
    ours: torch.Tensor,
    ref: torch.Tensor,
    gold: torch.Tensor,
    dtype: torch.dtype,
    what: str,
    tol: float = 1e-5,
) -> None:
    """fp32: ``ours`` ~= ``ref`` to ``tol``. Half precision: ``ours`` is no further from the fp32
    ``gold`` than twice the reference's own error, plus a small floor."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    scale = max(gold.abs().max().item(), 1.0) if gold.numel() else 1.0
    if dtype == torch.float32:
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")
        return
    err_ours = (ours.float() - gold.float()).abs().max().item()
    err_ref = (ref.float() - gold.float()).abs().max().item()
    bound = 2.0 * err_ref + _FLOOR[dtype] * scale
    assert err_ours <= bound, f"{what}: max error {err_ours:.3g} vs gold, reference's {err_ref:.3g}"
