"""Gated MLP activations: SwiGLU ``silu(g) * u`` (Llama, Mistral, Qwen, Phi-3) and
GeGLU with tanh-approximated GELU ``gelu_tanh(g) * u`` (Gemma 2/3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loris.kernels import use_triton


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def geglu_tanh_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate):
        pass  # the Triton path lands here (kernel + autograd Function in this file)
    return swiglu_reference(gate, up)


def geglu_tanh(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate):
        pass  # the Triton path lands here (kernel + autograd Function in this file)
    return geglu_tanh_reference(gate, up)


GATED_ACTIVATIONS = {"silu": swiglu, "gelu_tanh": geglu_tanh}
