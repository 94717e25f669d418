"""Frozen quantized linears: NF4 with double quantization and row-wise int8, in bitsandbytes' layout.

Weights are stored exactly as bitsandbytes (and so transformers) store them, so quantized checkpoints
load without re-quantizing. The matmul dequantizes on the fly; its backward dequantizes again rather
than keeping a 16-bit copy of every weight alive for the whole step.

Where the weight lives decides who does the NF4 math: on CUDA bitsandbytes quantizes and loris'
Triton kernel dequantizes; everywhere else loris' own torch code (``loris.kernels.nf4``) does both,
byte-for-byte in bitsandbytes' layout, so results never depend on the host CPU's instruction set
(bitsandbytes' CPU dequantize is wrong for some shapes on AVX-512 bf16 hosts).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loris.kernels import use_triton
from loris.kernels.nf4 import (
    dequantize_nf4_reference,
    dequantize_nf4_triton,
    pack_nibbles,
    quantize_blockwise_reference,
)

NF4_BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256  # bitsandbytes' block size for the 8-bit quantization of the NF4 scales


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ImportError("4-bit and 8-bit loading need bitsandbytes: pip install bitsandbytes") from e
    return bnb


def quantize_nf4(weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> tuple[torch.Tensor, Any]:
    """NF4 with double-quantized scales: (packed uint8 codes, bitsandbytes ``QuantState``).

    bitsandbytes on CUDA; loris' torch reference elsewhere, which writes the same bytes (tested
    against bitsandbytes as the layout oracle) without bitsandbytes' host-dependent CPU kernels.
    """
    F = _bnb().functional
    weight = weight.contiguous()
    if weight.is_cuda:
        return F.quantize_4bit(
            weight, blocksize=blocksize, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8
        )
    code = F.get_4bit_type("nf4", device=weight.device)
    codes, absmax = quantize_blockwise_reference(weight, code, blocksize)
    packed = pack_nibbles(codes, pad_code=int(code.abs().argmin()))
    offset = absmax.mean()
    code2 = F.create_dynamic_map().to(weight.device)
    q_absmax, absmax2 = quantize_blockwise_reference(absmax - offset, code2, NESTED_BLOCKSIZE)
    state2 = F.QuantState(absmax=absmax2, code=code2, blocksize=NESTED_BLOCKSIZE, dtype=torch.float32)
    state = F.QuantState(
        absmax=q_absmax.to(torch.uint8),
        shape=weight.shape,
        code=code,
        blocksize=blocksize,
        quant_type="nf4",
        dtype=weight.dtype,
        offset=offset,
        state2=state2,
    )
    return packed, state


class _DequantMatmul(torch.autograd.Function):
    """y = x @ W^T for a frozen quantized W, keeping no dequantized copy for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: QuantizedLinear) -> torch.Tensor:
        ctx.module = module
        return x @ module.dequantize(x.dtype).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad @ ctx.module.dequantize(grad.dtype), None


class QuantizedLinear(nn.Module):
    """Shared surface of the quantized linears: a frozen weight plus an optional 16-bit bias."""

    in_features: int
    out_features: int

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _DequantMatmul.apply(x, self)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Linear4bit(QuantizedLinear):
    """NF4 weight, 64-element blocks, absmax itself 8-bit quantized (bitsandbytes `nested` state)."""

    def __init__(self, packed: torch.Tensor, quant_state: Any, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", packed, persistent=True)
        self.quant_state = quant_state
        self.out_features, self.in_features = tuple(quant_state.shape)
        self.compute_dtype = quant_state.dtype
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, blocksize: int = NF4_BLOCKSIZE
    ) -> Linear4bit:
        packed, state = quantize_nf4(weight, blocksize)
        return cls(packed, state, bias)

    @classmethod
    def from_bnb_tensors(
        cls, packed: torch.Tensor, state_tensors: dict[str, torch.Tensor], bias: torch.Tensor | None, device
    ) -> Linear4bit:
        """From the tensors transformers saves for a `Linear4bit` (weight, weight.absmax, ...)."""
        state = _bnb().functional.QuantState.from_dict(dict(state_tensors), device=device)
        return cls(packed.to(device), state, bias)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        # On CUDA loris' Triton kernel, straight into ``dtype``: 1.4-1.5x bitsandbytes' own on
        # Llama-3.1-8B projections (H200, benchmarks/kernels/nf4.py).
        # Off CUDA, loris' reference: bitsandbytes' CPU kernels depend on the host (module docstring).
        if use_triton(self.weight):
            return dequantize_nf4_triton(self.weight, self.quant_state, dtype)
        if not self.weight.is_cuda:
            return dequantize_nf4_reference(self.weight, self.quant_state, dtype)
        w = _bnb().functional.dequantize_4bit(self.weight, self.quant_state)
        return w if dtype is None or w.dtype == dtype else w.to(dtype)

    def bnb_state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors transformers expects for this weight in a saved 4-bit checkpoint."""
        out = {prefix + "weight": self.weight}
        for k, v in self.quant_state.as_dict(packed=True).items():
            out[f"{prefix}weight.{k}"] = v
        if self.bias is not None:
            out[prefix + "bias"] = self.bias.data
        return out

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.quant_state.to(self.weight.device)
        return self


class Linear8bit(QuantizedLinear):
    """Row-wise absmax int8 (LLM.int8's storage: int8 `weight` + fp32 `SCB` row scales)."""

    def __init__(
        self, int8_weight: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
    ):
        super().__init__()
        self.register_buffer("weight", int8_weight)
        self.register_buffer("SCB", scb.float())
        self.out_features, self.in_features = int8_weight.shape
        self.compute_dtype = dtype
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear8bit:
        q, scb, _ = _bnb().functional.int8_vectorwise_quant(weight.contiguous())
        return cls(q, scb, bias, weight.dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = self.weight.float() * (self.SCB[:, None] / 127.0)
        return w.to(dtype or self.compute_dtype)


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, mode: str) -> QuantizedLinear:
    if mode == "nf4":
        return Linear4bit.from_float(weight, bias)
    if mode == "int8":
        return Linear8bit.from_float(weight, bias)
    raise ValueError(f"unknown quantization mode {mode!r} (nf4, int8)")


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes held by the weights of every linear projection (quantized or not) under `module`."""
    total = 0
    for m in module.modules():
        if isinstance(m, Linear4bit):
            qs = m.quant_state
            total += m.weight.numel() * m.weight.element_size() + qs.absmax.numel() * qs.absmax.element_size()
            if qs.state2 is not None:
                total += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
        elif isinstance(m, Linear8bit):
            total += m.weight.numel() + m.SCB.numel() * 4
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


__all__ = [
    "quantize_nf4",
    "Linear4bit",
    "Linear8bit",
    "QuantizedLinear",
    "quantized_linear",
    "linear_weight_bytes",
]
