"""GGML quantization types in vectorised PyTorch, and llama.cpp's per-tensor type mixes.

This module lets the GGUF converter (``export/gguf.py``) write every common quant type without
building llama.cpp. It has two halves.

**Block quantizers.** ``quantize(tensor, qtype)`` returns what ``gguf.quants.quantize`` returns
for the same type, so the result goes straight into
``gguf.GGUFWriter.add_tensor(name, array, raw_dtype=qtype)``:

* F32 / F16: a float32 / float16 array of the tensor's shape;
* BF16 and every block type: a uint8 array shaped ``(*shape[:-1], row_bytes)`` holding the GGML
  block structs byte for byte.

Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Each
follows llama.cpp's reference CPU quantizer (the ``quantize_row_*_ref`` path that
``llama-quantize`` takes without an importance matrix): the same search for scales and mins,
the same candidate scales, the same float32 operation order (sums are accumulated left to right
as the C loops do) and the same round-to-nearest rules, so that blocks come out byte-identical to
llama.cpp's for the same float32 input (measured: 100% of blocks for every type against
llama-cpp-python 0.3.36 built with ``GGML_NATIVE=off``; a build whose compiler contracts float
operations into FMA can differ in rare near-tie blocks). Work is vectorised over all blocks of a
chunk of rows; the only Python loops run over positions inside a block or over candidate scales,
never over blocks. The code is device-agnostic, so tensors on CUDA are quantized on CUDA (byte
parity is verified on CPU). On small, busy CPUs one torch thread is often faster than several.

**Type mixes.** A "method" is a llama.cpp file type such as ``q4_k_m``. ``TypeMixer`` (or the
``tensor_type_for`` shortcut) picks each tensor's GGML type the way llama.cpp's
``llama_tensor_get_type`` does for dense and MoE decoder families (llama, mistral, qwen2/3,
gemma2/3, phi3): 1-D tensors, norms and router weights stay F32; ``output.weight`` (and a tied
``token_embd.weight``) get Q6_K (Q8_0 for q8_0 or when the row length does not fit a super-block);
``attn_v``/``attn_qkv`` and ``ffn_down`` get more bits on the layers chosen by llama.cpp's
"use_more_bits" rule; GQA-dependent rules use ``n_head // n_head_kv``; tensors whose row length
does not divide the block size fall back to Q4_0/Q5_0/Q5_1/Q8_0 (or F16) as llama.cpp does.

Public API::

    resolve_quantization_methods(methods, model_dtype) -> list[str]
    file_type_for(method) -> gguf.LlamaFileType          # general.file_type
    default_type_for(method) -> gguf.GGMLQuantizationType
    TypeMixer(method, n_layers=..., n_head=..., n_head_kv=..., n_expert=0,
              tied_embeddings=False, arch="llama").type_for(gguf_name, shape)
    tensor_type_for(method, gguf_name, shape, *, n_layers, layer_index, n_head, n_head_kv,
                    n_expert=0, tied_embeddings=False, arch="llama") -> GGMLQuantizationType
    quantize(tensor, qtype, *, chunk_elements=None) -> numpy.ndarray

Shapes are PyTorch shapes (``(rows, row_length)``): the last dimension is GGML's ``ne[0]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

QK_K = 256
_GROUP_MAX_EPS = 1e-15  # below this a group counts as all zero, as in ggml
# values per chunk: on CPU the work buffers stay cache-sized; on GPU chunks are big enough to
# hide launch overhead while bounding the ~6x temporaries
_DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 24}

# --------------------------------------------------------------------------------------------
# methods and file types
# --------------------------------------------------------------------------------------------

_METHODS: dict[str, tuple[FT, Q]] = {
    "q2_k": (FT.MOSTLY_Q2_K, Q.Q2_K),
    "q3_k_s": (FT.MOSTLY_Q3_K_S, Q.Q3_K),
    "q3_k_m": (FT.MOSTLY_Q3_K_M, Q.Q3_K),
    "q3_k_l": (FT.MOSTLY_Q3_K_L, Q.Q3_K),
    "q4_k_s": (FT.MOSTLY_Q4_K_S, Q.Q4_K),
    "q4_k_m": (FT.MOSTLY_Q4_K_M, Q.Q4_K),
    "q5_k_s": (FT.MOSTLY_Q5_K_S, Q.Q5_K),
    "q5_k_m": (FT.MOSTLY_Q5_K_M, Q.Q5_K),
    "q6_k": (FT.MOSTLY_Q6_K, Q.Q6_K),
    "q8_0": (FT.MOSTLY_Q8_0, Q.Q8_0),
    "q4_0": (FT.MOSTLY_Q4_0, Q.Q4_0),
    "q4_1": (FT.MOSTLY_Q4_1, Q.Q4_1),
    "q5_0": (FT.MOSTLY_Q5_0, Q.Q5_0),
    "q5_1": (FT.MOSTLY_Q5_1, Q.Q5_1),
    "f16": (FT.MOSTLY_F16, Q.F16),
    "bf16": (FT.MOSTLY_BF16, Q.BF16),
    "f32": (FT.ALL_F32, Q.F32),
}
SUPPORTED_METHODS: tuple[str, ...] = tuple(_METHODS)

_ALIASES = {
    "quantized": "q4_k_m",
    "fast_quantized": "q8_0",
    "q4_k": "q4_k_m",
    "q5_k": "q5_k_m",
    "q3_k": "q3_k_m",
}
_FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)


def resolve_quantization_methods(
    methods: str | Sequence[str] | None, model_dtype: torch.dtype = torch.float16
) -> list[str]:
    """Normalise user-facing method names (Unsloth's spellings and aliases) to canonical ones.

    ``None`` means ``q8_0``; ``not_quantized`` keeps the model's 16-bit dtype (bf16 stays bf16,
    anything else becomes f16). Duplicates are dropped, order is kept.
    """
    if methods is None:
        methods = ["q8_0"]
    elif isinstance(methods, str):
        methods = [methods]
    resolved: list[str] = []
    for raw in methods:
        name = str(raw).strip().lower()
        if name == "not_quantized":
            name = "bf16" if model_dtype == torch.bfloat16 else "f16"
        name = _ALIASES.get(name, name)
        if name not in _METHODS:
            aliases = ", ".join(sorted([*_ALIASES, "not_quantized"]))
            raise ValueError(
                f"Unsupported GGUF quantization method {raw!r}. Use one of: {', '.join(SUPPORTED_METHODS)} "
                f"(aliases: {aliases})."
            )
        if name not in resolved:
            resolved.append(name)
    return resolved


def _canonical(method: str) -> str:
    return resolve_quantization_methods([method])[0]


def file_type_for(method: str) -> FT:
    """The ``general.file_type`` value llama.cpp writes for this method."""
    return _METHODS[_canonical(method)][0]


def default_type_for(method: str) -> Q:
    """The GGML type most tensors get under this method (llama.cpp's default type of the ftype)."""
    return _METHODS[_canonical(method)][1]


# --------------------------------------------------------------------------------------------
# per-tensor type selection (llama.cpp's llama_tensor_get_type, for our families)
# --------------------------------------------------------------------------------------------

_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_KEEP_F32_SUBSTRINGS = ("_norm.weight", "ffn_gate_inp.weight")


def _category(name: str) -> str:
    """Coarse tensor role, decided by substrings of the GGUF name in llama.cpp's order."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (
        ("attn_qkv.weight", "attn_v"),  # fused qkv is treated like attn_v
        ("attn_kv_b.weight", "attn_v"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get a bigger type: first and last eighth, every third."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _n_dims(shape: Sequence[int]) -> int:
    """ggml's n_dims: trailing size-1 dims of ne (leading ones in torch order) do not count."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return len(dims)


@dataclasses.dataclass(frozen=True)
class TypeMixer:
    """Chooses the GGML type of each tensor for one method, from model-level facts.

    llama.cpp counts attn_v / ffn_down tensors as it walks them in layer order; for the families we
    export every layer has exactly one of each, so the counter equals the layer index, which we
    read from the ``blk.N.`` prefix. That makes the choice independent of call order.

    ``tied_embeddings`` means the file has no ``output.weight``: llama.cpp then quantizes
    ``token_embd.weight`` like the output head. ``arch`` (GGUF arch name) only matters for
    llama.cpp's 70B rule (80-layer llama with GQA, or 80-layer qwen2).
    """

    method: str
    n_layers: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    tied_embeddings: bool = False
    arch: str = "llama"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _canonical(self.method))
        if self.n_layers <= 0:
            raise ValueError(f"n_layers must be positive, got {self.n_layers}")

    @property
    def ftype(self) -> FT:
        return _METHODS[self.method][0]

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        if self.n_layers != 80:
            return False
        return (self.arch == "llama" and self.n_head != self.n_head_kv) or self.arch == "qwen2"

    def type_for(self, gguf_name: str, shape: Sequence[int], layer_index: int | None = None) -> Q:
        """GGML type for one tensor; ``shape`` in torch order, ``layer_index`` parsed if None."""
        if layer_index is None:
            match = _LAYER_RE.match(gguf_name)
            layer_index = int(match.group(1)) if match else None
        if not self._allows_quantization(gguf_name, shape):
            return Q.F32
        default = _METHODS[self.method][1]
        if default in _FLOAT_TYPES:
            return default
        chosen = self._mixed_type(default, gguf_name, shape, layer_index)
        return _fallback(chosen, shape[-1])

    @staticmethod
    def _allows_quantization(name: str, shape: Sequence[int]) -> bool:
        if _n_dims(shape) < 2 or not name.endswith("weight"):
            return False
        return not any(s in name for s in _KEEP_F32_SUBSTRINGS)

    def _mixed_type(self, new_type: Q, name: str, shape: Sequence[int], layer: int | None) -> Q:
        cat = _category(name)
        ft = self.ftype
        if cat == "output" or (self.tied_embeddings and cat == "token_embd"):
            block = gguf.GGML_QUANT_SIZES[new_type][0]
            if shape[-1] % block != 0:
                return Q.Q8_0
            return new_type if new_type == Q.Q8_0 else Q.Q6_K
        if cat == "token_embd":
            return new_type
        if cat == "attn_v":
            return self._attn_v_type(new_type, self._need_layer(layer, name))
        if cat == "attn_k":
            return Q.Q8_0 if self.n_expert == 8 else new_type
        if cat == "ffn_down":
            return self._ffn_down_type(new_type, self._need_layer(layer, name))
        if cat == "attn_output":
            return self._attn_output_type(new_type, ft)
        return new_type

    def _need_layer(self, layer: int | None, name: str) -> int:
        if layer is None or not 0 <= layer < self.n_layers:
            raise ValueError(
                f"Cannot place tensor {name!r} in a layer (got {layer}, n_layers={self.n_layers}); "
                "layer tensors must be named 'blk.N.…' or given layer_index."
            )
        return layer

    def _attn_v_type(self, new_type: Q, i: int) -> Q:
        ft = self.ftype
        if ft == FT.MOSTLY_Q2_K:
            new_type = Q.Q4_K if self.n_gqa >= 4 else Q.Q3_K
        elif ft == FT.MOSTLY_Q3_K_M:
            new_type = Q.Q5_K if i < 2 else Q.Q4_K
        elif ft == FT.MOSTLY_Q3_K_L:
            new_type = Q.Q5_K
        elif ft in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and _use_more_bits(i, self.n_layers):
            new_type = Q.Q6_K
        elif ft == FT.MOSTLY_Q4_K_S and i < 4:
            new_type = Q.Q5_K
        if self.is_70b and new_type in (Q.Q3_K, Q.Q4_K):
            new_type = Q.Q5_K
        if self.n_expert == 8:
            new_type = Q.Q8_0
        return new_type

    def _ffn_down_type(self, new_type: Q, i: int) -> Q:
        ft, n = self.ftype, self.n_layers
        if ft == FT.MOSTLY_Q2_K:
            return Q.Q3_K
        if ft == FT.MOSTLY_Q3_K_M:
            return Q.Q5_K if i < n // 16 else Q.Q4_K
        if ft == FT.MOSTLY_Q3_K_L:
            return Q.Q5_K
        if ft == FT.MOSTLY_Q4_K_M:
            return Q.Q6_K if _use_more_bits(i, n) else new_type
        if ft == FT.MOSTLY_Q5_K_M:
            return Q.Q6_K if _use_more_bits(i, n) else new_type
        if ft == FT.MOSTLY_Q4_K_S and i < n // 8:
            return Q.Q5_K
        return new_type

    def _attn_output_type(self, new_type: Q, ft: FT) -> Q:
        if self.n_expert == 8:
            bumped = (FT.MOSTLY_Q2_K, FT.MOSTLY_Q3_K_S, FT.MOSTLY_Q3_K_M, FT.MOSTLY_Q4_K_S, FT.MOSTLY_Q4_K_M)
            return Q.Q5_K if ft in bumped else new_type
        return {
            FT.MOSTLY_Q2_K: Q.Q3_K,
            FT.MOSTLY_Q3_K_M: Q.Q4_K,
            FT.MOSTLY_Q3_K_L: Q.Q5_K,
        }.get(ft, new_type)


def _fallback(qtype: Q, row_length: int) -> Q:
    """A type whose block size divides the row, as llama.cpp's tensor_type_fallback picks it."""
    if row_length % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    new = _FALLBACK.get(qtype, qtype)
    if row_length % gguf.GGML_QUANT_SIZES[new][0] != 0:
        return Q.F16
    return new


def tensor_type_for(
    method: str,
    gguf_name: str,
    shape: tuple[int, ...],
    *,
    n_layers: int,
    layer_index: int | None,
    n_head: int,
    n_head_kv: int,
    n_expert: int = 0,
    tied_embeddings: bool = False,
    arch: str = "llama",
) -> Q:
    """One-call form of ``TypeMixer(...).type_for(...)``."""
    mixer = TypeMixer(method, n_layers, n_head, n_head_kv, n_expert, tied_embeddings, arch)
    return mixer.type_for(gguf_name, shape, layer_index)


# --------------------------------------------------------------------------------------------
# float helpers that reproduce ggml's float32 arithmetic
# --------------------------------------------------------------------------------------------


def _f32(value: float) -> float:
    """Round a Python float to float32, as a C float constant or int-to-float conversion is."""
    return float(np.float32(value))


def _div(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """IEEE float32 a / b with a Python-number side widened to a tensor first.

    PyTorch evaluates ``number / tensor`` as ``reciprocal(tensor) * number`` and, on CUDA,
    ``tensor / number`` as a multiply by the reciprocal; both round twice and move scales off
    the values the C reference computes.
    """
    if not isinstance(a, torch.Tensor):
        a = torch.full_like(b, _f32(a))
    if not isinstance(b, torch.Tensor):
        b = torch.full_like(a, _f32(b))
    return torch.div(a, b)


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """float32 -> IEEE half (round to nearest even, like ggml) as 2 little-endian bytes."""
    return x.to(torch.float16).unsqueeze(-1).view(torch.uint8)


def _fp16_value(x: torch.Tensor) -> torch.Tensor:
    """The float32 value that a stored half will decode to."""
    return x.to(torch.float16).to(torch.float32)


def _seq_sum(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Sum over ``dim`` strictly in index order, in float32.

    ggml's C loops accumulate this way; matching the order keeps every later comparison (which
    candidate scale wins) on the same side of a near-tie. Group data is kept position-major
    ([n, groups]) so each step adds contiguous rows.
    """
    acc = t.select(dim, 0).clone()
    for i in range(1, t.shape[dim]):
        acc += t.select(dim, i)
    return acc


def _first_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|max|, signed value) of the first element with the largest magnitude in each row.

    An all-zero row yields +0.0 even when it holds -0.0, as the C loop that starts from 0 does;
    the sign of a zero reaches the stored fp16 scale.
    """
    idx = x.abs().argmax(dim=-1, keepdim=True)
    value = x.gather(-1, idx).squeeze(-1)
    value = torch.where(value == 0, torch.zeros_like(value), value)
    return value.abs(), value


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves go away from zero (torch.round goes to even)."""
    t = torch.trunc(x)
    return t + torch.where((x - t).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def _pack_nibbles(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return (lo | (hi << 4)).to(torch.uint8)


def _pack_2bit(L: torch.Tensor) -> torch.Tensor:
    """256 values in [0,3] -> 64 bytes: byte l of half h holds L[h*128 + 32k + l] at bits 2k."""
    v = L.to(torch.int32).view(-1, 2, 4, 32)
    out = v[:, :, 0] | (v[:, :, 1] << 2) | (v[:, :, 2] << 4) | (v[:, :, 3] << 6)
    return out.reshape(-1, 64).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# legacy 32-element block types
# --------------------------------------------------------------------------------------------


def _q8_0(x: torch.Tensor) -> torch.Tensor:
    amax = x.abs().amax(dim=-1)
    d = _div(amax, 127.0)
    inv = torch.where(d != 0, _div(1.0, d), torch.zeros_like(d))
    q = _round_half_away(x * inv[:, None]).to(torch.int8).view(torch.uint8)
    return torch.cat([_fp16_bytes(d), q], dim=-1)


def _symmetric_4_5(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0/Q5_0: scale from the signed extreme so it maps to -levels/2; returns (d, codes)."""
    half = levels // 2
    _, signed_max = _first_absmax(x)
    d = _div(signed_max, -float(half))
    inv = torch.where(d != 0, _div(1.0, d), torch.zeros_like(d))
    codes = torch.trunc(x * inv[:, None] + (half + 0.5)).clamp(max=levels - 1).to(torch.int32)
    return d, codes


def _affine_4_5(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1/Q5_1: min/max affine grid; returns (d, min, codes)."""
    # first occurrence of the extreme, as the C scan keeps it: decides the sign of a zero min
    lo = x.gather(-1, x.argmin(dim=-1, keepdim=True)).squeeze(-1)
    hi = x.gather(-1, x.argmax(dim=-1, keepdim=True)).squeeze(-1)
    d = _div(hi - lo, float(levels - 1))
    inv = torch.where(d != 0, _div(1.0, d), torch.zeros_like(d))
    codes = torch.trunc((x - lo[:, None]) * inv[:, None] + 0.5).clamp(max=levels - 1).to(torch.int32)
    return d, lo, codes


def _high_bits_u32(codes: torch.Tensor) -> torch.Tensor:
    """Bit 4 of each of the 32 codes gathered into one little-endian uint32 (4 bytes)."""
    bits = (codes >> 4) & 1
    by = bits.view(-1, 4, 8) << torch.arange(8, device=codes.device, dtype=torch.int32)
    return by.sum(dim=-1).to(torch.uint8)


def _q4_0(x: torch.Tensor) -> torch.Tensor:
    d, c = _symmetric_4_5(x, 16)
    return torch.cat([_fp16_bytes(d), _pack_nibbles(c[:, :16], c[:, 16:])], dim=-1)


def _q4_1(x: torch.Tensor) -> torch.Tensor:
    d, lo, c = _affine_4_5(x, 16)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(lo), _pack_nibbles(c[:, :16], c[:, 16:])], dim=-1)


def _q5_0(x: torch.Tensor) -> torch.Tensor:
    d, c = _symmetric_4_5(x, 32)
    qs = _pack_nibbles(c[:, :16] & 15, c[:, 16:] & 15)
    return torch.cat([_fp16_bytes(d), _high_bits_u32(c), qs], dim=-1)


def _q5_1(x: torch.Tensor) -> torch.Tensor:
    d, lo, c = _affine_4_5(x, 32)
    qs = _pack_nibbles(c[:, :16] & 15, c[:, 16:] & 15)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(lo), _high_bits_u32(c), qs], dim=-1)


# --------------------------------------------------------------------------------------------
# K-quant building blocks (llama.cpp's make_qx_quants / make_q3_quants / make_qkx2_quants)
# --------------------------------------------------------------------------------------------


def _first_absmax_t(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_first_absmax for position-major [n, B] data."""
    idx = x.abs().argmax(dim=0, keepdim=True)
    value = x.gather(0, idx).squeeze(0)
    value = torch.where(value == 0, torch.zeros_like(value), value)
    return value.abs(), value


def _make_qx_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric scale search weighted by x², trying 18 nudged grids (Q6_K's sub-block step).

    x: position-major [n, B]. Returns (scale [B], L [n, B] in [0, 2*nmax)); all-zero groups
    give L = 0.
    """
    amax, signed_max = _first_absmax_t(x)
    zero = amax < _GROUP_MAX_EPS
    safe_max = torch.where(zero, torch.ones_like(signed_max), signed_max)
    w = x * x
    wx = w * x

    levels = torch.empty_like(x)  # work buffers reused by every grid: fresh multi-MiB tensors
    prods = torch.empty((2, *x.shape), dtype=x.dtype, device=x.device)  # page-fault on each alloc

    def grid(iscale: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.mul(x, iscale, out=out).round_().clamp_(-nmax, nmax - 1)

    def sums(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid(iscale, levels)
        torch.mul(wx, levels, out=prods[0])
        torch.mul(w, levels, out=prods[1]).mul_(levels)
        both = _seq_sum(prods, dim=1)
        return both[0], both[1]

    # only the winning grid's inverse scale is tracked; its levels are rebuilt once at the end
    best_iscale = _div(-nmax, safe_max)
    sumlx, suml2 = sums(best_iscale)
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(suml2))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = _div(-_f32(nmax + _f32(_f32(0.1) * step)), safe_max)
        slx, sl2 = sums(iscale)
        take = (sl2 > 0) & (slx * slx > best * sl2)
        best_iscale = torch.where(take, iscale, best_iscale)
        scale = torch.where(take, slx / sl2, scale)
        best = torch.where(take, scale * slx, best)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    L = grid(best_iscale).add_(nmax).mul_(~zero)
    return scale, L


def _make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric scale by coordinate descent on the x²-weighted error (Q3_K's sub-block step).

    x: position-major [n, B]. Each pass visits the positions in order and moves a level when
    that improves the optimal scale's fit, as the reference does; passes stop after 5 or when
    nothing moved (a pass that moves nothing would repeat itself, so stopping all groups
    together changes no result).
    """
    amax, signed_max = _first_absmax_t(x)
    zero = amax < _GROUP_MAX_EPS
    safe_max = torch.where(zero, torch.ones_like(signed_max), signed_max)
    L = torch.round(_div(-nmax, safe_max) * x).clamp_(-nmax, nmax - 1)
    w = x * x
    wx = w * x
    sumlx = _seq_sum(wx * L)
    suml2 = _seq_sum(w * L * L)
    for _ in range(5):
        moved = torch.zeros_like(zero)
        for i in range(x.shape[0]):
            li = L[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            positive = slx > 0
            ratio = x[i] * sl2 / torch.where(positive, slx, torch.ones_like(slx))
            new_l = torch.round(ratio).clamp_(-nmax, nmax - 1)
            slx_new = slx + wx[i] * new_l
            sl2_new = sl2 + w[i] * new_l * new_l
            take = positive & (new_l != li) & (sl2_new > 0)
            take &= slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new
            L[i] = torch.where(take, new_l, li)
            sumlx = torch.where(take, slx_new, sumlx)
            suml2 = torch.where(take, sl2_new, suml2)
            moved |= take
        if not bool(moved.any()):
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(suml2))
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    L = torch.where(zero, torch.zeros_like(L), L + nmax)
    return scale, L


def _make_qkx2_quants(
    x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine (scale, min) fit with a weighted least-squares search over nstep+1 grids.

    x, w: position-major [n, B]. Returns (scale [B], the_min [B], L [n, B] in [0, nmax]); a
    group decodes as scale*L - the_min.
    """
    lo = x.amin(dim=0)
    lo = torch.where(lo > 0, torch.zeros_like(lo), lo)
    hi = x.amax(dim=0)
    flat = hi == lo
    sum_w = _seq_sum(w)
    sum_x = _seq_sum(w * x)
    # work buffers reused by every grid: fresh multi-MiB tensors page-fault on each allocation
    cand = torch.empty_like(x)
    diff = torch.empty_like(x)
    prods = torch.empty((3, *x.shape), dtype=x.dtype, device=x.device)

    def grid(iscale: torch.Tensor, mn: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sub(x, mn, out=out).mul_(iscale).round_().clamp_(0, nmax)

    def error(scale: torch.Tensor, mn: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        torch.mul(levels, scale, out=diff).add_(mn).sub_(x)
        if use_mad:
            diff.abs_()
        else:
            diff.square_()
        return _seq_sum(diff.mul_(w))

    def span(mn: torch.Tensor) -> torch.Tensor:
        return torch.where(flat, torch.ones_like(hi), hi - mn)

    iscale = _div(nmax, span(lo))
    scale = _div(1.0, iscale)
    best = error(scale, lo, grid(iscale, lo, cand))
    mn = lo
    # the grid (inverse scale, shift) that produced the best levels; levels are rebuilt at the end
    best_iscale, best_shift = iscale, lo
    for step in range(nstep + 1):
        # the reference keeps using the running best min for both the span and the shift
        numerator = _f32(_f32(rmin + _f32(_f32(rdelta) * step)) + nmax)
        iscale = _div(numerator, span(mn))
        grid(iscale, mn, cand)
        torch.mul(w, cand, out=prods[0])
        torch.mul(prods[0], cand, out=prods[1])
        torch.mul(prods[0], x, out=prods[2])
        sum_l, sum_l2, sum_xl = _seq_sum(prods, dim=1).unbind(0)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        safe_d = torch.where(ok, D, torch.ones_like(D))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_d
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_d
        pos = this_min > 0
        safe_l2 = torch.where(sum_l2 != 0, sum_l2, torch.ones_like(sum_l2))
        this_scale = torch.where(pos, sum_xl / safe_l2, this_scale)
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        cur = error(this_scale, this_min, cand)
        take = ok & (cur < best)
        best_iscale = torch.where(take, iscale, best_iscale)
        best_shift = torch.where(take, mn, best_shift)
        best = torch.where(take, cur, best)
        scale = torch.where(take, this_scale, scale)
        mn = torch.where(take, this_min, mn)
    L = grid(best_iscale, best_shift).mul_(~flat)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    mn = torch.where(flat, lo, mn)
    return scale, -mn, L


def _groups_t(x: torch.Tensor, n: int) -> torch.Tensor:
    """[nb, 256] super-blocks -> position-major groups [n, nb*256/n]."""
    return x.reshape(-1, n).t().contiguous()


def _ungroup_t(L: torch.Tensor, nb: int, n: int) -> torch.Tensor:
    """Position-major group levels [n, B] -> [nb, 256/n, n]."""
    return L.t().reshape(nb, QK_K // n, n)


def _positive_max(v: torch.Tensor) -> torch.Tensor:
    """max(0, max over the last dim), as the C loops that start from 0 and use '>' compute it."""
    m = v.amax(dim=-1)
    return torch.where(m > 0, m, torch.zeros_like(m))


def _nearest_u8(v: torch.Tensor) -> torch.Tensor:
    """nearest_int stored into a uint8_t (wraps modulo 256), as an int32 tensor."""
    return torch.round(v).to(torch.int32) & 0xFF


def _requantize_affine(
    x: torch.Tensor, L: torch.Tensor, d: torch.Tensor, dm: torch.Tensor, nmax: int
) -> torch.Tensor:
    """Re-derive levels against the stored (rounded) scales; groups with d == 0 keep L."""
    safe = torch.where(d != 0, d, torch.ones_like(d))
    fresh = torch.round((x + dm[..., None]) / safe[..., None]).clamp(0, nmax)
    return torch.where((d != 0)[..., None], fresh, L)


def _requantize_symmetric(x: torch.Tensor, L: torch.Tensor, d: torch.Tensor, nmax: int) -> torch.Tensor:
    safe = torch.where(d != 0, d, torch.ones_like(d))
    fresh = torch.round(x / safe[..., None]).clamp(-nmax, nmax - 1) + nmax
    return torch.where((d != 0)[..., None], fresh, L)


# --------------------------------------------------------------------------------------------
# K-quant super-blocks (256 elements)
# --------------------------------------------------------------------------------------------


def _q2_k(x: torch.Tensor) -> torch.Tensor:
    nb = x.shape[0]
    xs = _groups_t(x, 16)
    scales, mins, L = _make_qkx2_quants(xs, xs.abs(), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.view(nb, 16), mins.view(nb, 16), _ungroup_t(L, nb, 16)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)

    has_s = max_scale > 0
    inv_s = torch.where(has_s, _div(15.0, torch.where(has_s, max_scale, torch.ones_like(max_scale))), 0.0)
    sc = torch.where(has_s[:, None], _nearest_u8(inv_s[:, None] * scales), 0)
    d16 = torch.where(has_s, _div(max_scale, 15.0), torch.zeros_like(max_scale))
    has_m = max_min > 0
    inv_m = torch.where(has_m, _div(15.0, torch.where(has_m, max_min, torch.ones_like(max_min))), 0.0)
    mq = torch.where(has_m[:, None], _nearest_u8(inv_m[:, None] * mins), 0)
    dmin16 = torch.where(has_m, _div(max_min, 15.0), torch.zeros_like(max_min))
    packed_scales = (sc | (mq << 4)) & 0xFF

    d = _fp16_value(d16)[:, None] * (packed_scales & 0xF).to(torch.float32)
    dm = _fp16_value(dmin16)[:, None] * (packed_scales >> 4).to(torch.float32)
    L = _requantize_affine(x.view(nb, 16, 16), L, d, dm, 3)
    return torch.cat(
        [packed_scales.to(torch.uint8), _pack_2bit(L.view(nb, 256)), _fp16_bytes(d16), _fp16_bytes(dmin16)],
        dim=-1,
    )


def _pack_q3_scales(l6: torch.Tensor) -> torch.Tensor:
    """16 six-bit scales -> 12 bytes: low nibbles in bytes 0-7, top 2 bits in bytes 8-11."""
    low = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)
    top = (l6 >> 4).view(-1, 4, 4)  # [nb, group g = j // 4, i = j % 4]
    high = top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)
    return torch.cat([low, high], dim=-1).to(torch.uint8)


def _q3_k(x: torch.Tensor) -> torch.Tensor:
    nb = x.shape[0]
    scales, L = _make_q3_quants(_groups_t(x, 16), 4)
    scales, L = scales.view(nb, 16), _ungroup_t(L, nb, 16)
    _, max_scale = _first_absmax(scales)
    has = max_scale != 0
    iscale = _div(-32.0, torch.where(has, max_scale, torch.ones_like(max_scale)))
    l6 = torch.round(iscale[:, None] * scales).clamp(-32, 31).to(torch.int32) + 32
    l6 = torch.where(has[:, None], l6, 0)
    d16 = torch.where(has, _div(1.0, iscale), torch.zeros_like(iscale))

    d = _fp16_value(d16)[:, None] * (l6 - 32).to(torch.float32)
    d = torch.where(has[:, None], d, torch.zeros_like(d))
    L = _requantize_symmetric(x.view(nb, 16, 16), L, d, 4).view(nb, 256).to(torch.int32)

    high = (L > 3).to(torch.int32).view(nb, 8, 32)  # bit b of hmask[m] <- element 32*b + m
    hmask = (high << torch.arange(8, device=x.device, dtype=torch.int32)[:, None]).sum(dim=1)
    L = torch.where(L > 3, L - 4, L)
    return torch.cat(
        [hmask.to(torch.uint8), _pack_2bit(L), _pack_q3_scales(l6), _fp16_bytes(d16)],
        dim=-1,
    )


def _pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins -> the 12-byte layout shared by Q4_K and Q5_K."""
    b0 = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    b1 = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    b2 = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return torch.cat([b0, b1, b2], dim=-1).to(torch.uint8)


def _k4_common(x: torch.Tensor, nmax: int, rmin: float, nstep: int):
    """Shared Q4_K/Q5_K path: per-32 affine fits, 6-bit scale/min codes, final levels."""
    nb = x.shape[0]
    xs = _groups_t(x, 32)
    # sqrt in float64 then rounded: correctly rounded like C's sqrtf (torch's SIMD float32 sqrt
    # on CPU may be 1 ulp off, which moves the weights and hence the chosen scale)
    av_x = torch.sqrt(_div(_seq_sum(xs * xs), 32.0).double()).float()
    weights = av_x + xs.abs()
    scales, mins, L = _make_qkx2_quants(xs, weights, nmax, rmin, 0.1, nstep, False)
    scales, mins, L = scales.view(nb, 8), mins.view(nb, 8), _ungroup_t(L, nb, 32)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    inv_s = torch.where(max_scale > 0, _div(63.0, torch.where(max_scale > 0, max_scale, 1.0)), 0.0)
    inv_m = torch.where(max_min > 0, _div(63.0, torch.where(max_min > 0, max_min, 1.0)), 0.0)
    ls = _nearest_u8(inv_s[:, None] * scales).clamp(max=63)
    lm = _nearest_u8(inv_m[:, None] * mins).clamp(max=63)
    d16, dmin16 = _div(max_scale, 63.0), _div(max_min, 63.0)
    d = _fp16_value(d16)[:, None] * ls.to(torch.float32)
    dm = _fp16_value(dmin16)[:, None] * lm.to(torch.float32)
    L = _requantize_affine(x.view(nb, 8, 32), L, d, dm, nmax).to(torch.int32)
    head = torch.cat([_fp16_bytes(d16), _fp16_bytes(dmin16), _pack_k4_scales(ls, lm)], dim=-1)
    return head, L


def _q4_k(x: torch.Tensor) -> torch.Tensor:
    head, L = _k4_common(x, 15, -1.0, 20)
    qs = _pack_nibbles(L[:, 0::2], L[:, 1::2]).reshape(-1, 128)
    return torch.cat([head, qs], dim=-1)


def _q5_k(x: torch.Tensor) -> torch.Tensor:
    head, L = _k4_common(x, 31, -0.5, 15)
    shifts = torch.arange(8, device=x.device, dtype=torch.int32)[:, None]
    qh = (((L >> 4) & 1) << shifts).sum(dim=1)  # bit k of qh[j] <- sub-block k, element j
    qs = _pack_nibbles(L[:, 0::2] & 15, L[:, 1::2] & 15).reshape(-1, 128)
    return torch.cat([head, qh.to(torch.uint8), qs], dim=-1)


def _q6_k(x: torch.Tensor) -> torch.Tensor:
    nb = x.shape[0]
    scales, L = _make_qx_quants(_groups_t(x, 16), 32)
    scales, L = scales.view(nb, 16), _ungroup_t(L, nb, 16)
    max_abs, max_scale = _first_absmax(scales)
    empty = max_abs < _GROUP_MAX_EPS
    iscale = _div(-128.0, torch.where(empty, torch.ones_like(max_scale), max_scale))
    d16 = _div(1.0, iscale)
    sc = torch.round(iscale[:, None] * scales).clamp(max=127).to(torch.int32)
    d = _fp16_value(d16)[:, None] * sc.to(torch.float32)
    L = _requantize_symmetric(x.view(nb, 16, 16), L, d, 32).view(nb, 2, 4, 32).to(torch.int32)
    low, top = L & 0xF, L >> 4
    ql = torch.cat([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=-1)
    qh = top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)
    out = torch.cat(
        [
            ql.reshape(nb, 128).to(torch.uint8),
            qh.reshape(nb, 64).to(torch.uint8),
            sc.to(torch.int8).view(torch.uint8),
            _fp16_bytes(d16),
        ],
        dim=-1,
    )
    return torch.where(empty[:, None], torch.zeros_like(out), out)


_BLOCK_QUANTIZERS: dict[Q, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q2_K: _q2_k,
    Q.Q3_K: _q3_k,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
SUPPORTED_TYPES: tuple[Q, ...] = (Q.F32, Q.F16, Q.BF16, *_BLOCK_QUANTIZERS)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def quantize(tensor: torch.Tensor, qtype: Q, *, chunk_elements: int | None = None) -> np.ndarray:
    """Encode ``tensor`` as GGML ``qtype``; the result matches ``gguf.quants.quantize``'s form.

    Blocks are processed ``chunk_elements`` values at a time on the tensor's device (default:
    512Ki on CPU, 16Mi on CUDA), so memory stays bounded for large embeddings. Non-finite values are rejected: llama.cpp refuses them too.
    """
    qtype = Q(qtype)
    if qtype not in SUPPORTED_TYPES:
        names = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise ValueError(f"GGML type {qtype.name} is not supported here; supported: {names}")
    if tensor.ndim == 0:
        tensor = tensor.reshape(1)
    if qtype == Q.F32:
        return tensor.detach().to("cpu", torch.float32).numpy()
    if qtype == Q.F16:
        return tensor.detach().to(torch.float16).cpu().numpy()
    if qtype == Q.BF16:
        raw = tensor.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy()
        return raw.view(np.uint8)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row = tensor.shape[-1]
    if row % block != 0:
        raise ValueError(
            f"{qtype.name} needs rows of a multiple of {block} values, got {row} (shape "
            f"{tuple(tensor.shape)}); pick the fallback type with TypeMixer/tensor_type_for."
        )
    flat = tensor.detach().reshape(-1, block)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"Cannot quantize a tensor with NaN or Inf values to {qtype.name}.")
    out = np.empty((flat.shape[0], type_size), dtype=np.uint8)
    if chunk_elements is None:
        chunk_elements = _DEFAULT_CHUNK_ELEMENTS.get(flat.device.type, _DEFAULT_CHUNK_ELEMENTS["cpu"])
    blocks_per_chunk = max(1, chunk_elements // block)
    encode = _BLOCK_QUANTIZERS[qtype]
    for start in range(0, flat.shape[0], blocks_per_chunk):
        chunk = flat[start : start + blocks_per_chunk].to(torch.float32).contiguous()
        out[start : start + chunk.shape[0]] = encode(chunk).cpu().numpy()
    return out.reshape(*tensor.shape[:-1], row // block * type_size)
