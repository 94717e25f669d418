"""GGML quantizers and llama.cpp type mixes (src/loris/export/gguf_quants.py).

Decoding goes through gguf-py's own ``gguf.quants.dequantize``, an independent reader of the
block layouts, so a wrong bit or scale placement shows up as a large reconstruction error.
"""

from __future__ import annotations

import ctypes
import pathlib

import gguf
import numpy as np
import pytest
import torch

from loris.export.gguf_quants import (
    SUPPORTED_METHODS,
    TypeMixer,
    default_type_for,
    file_type_for,
    quantize,
    resolve_quantization_methods,
    tensor_type_for,
)

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType
LEGACY = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
KQUANTS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
BLOCK_TYPES = LEGACY + KQUANTS

# RMSE of a unit gaussian after a round trip, llama.cpp's reference quantizers measured on the
# same data (see benchmarks/results/gguf_quants_vs_llamacpp.md); the band allows a few percent.
EXPECTED_RMSE = {
    Q.Q8_0: 0.0053,
    Q.Q6_K: 0.0177,
    Q.Q5_1: 0.0407,
    Q.Q5_K: 0.0361,
    Q.Q5_0: 0.0425,
    Q.Q4_1: 0.0826,
    Q.Q4_K: 0.0718,
    Q.Q4_0: 0.0855,
    Q.Q3_K: 0.1502,
    Q.Q2_K: 0.2983,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small ops: one intra-op thread is faster and keeps timings steady on shared CI."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _gaussian(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _roundtrip(x: torch.Tensor, qtype: Q) -> np.ndarray:
    return gguf.quants.dequantize(quantize(x, qtype), qtype).reshape(x.shape)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


# ------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_block_layout_matches_gguf_sizes(qtype):
    x = _gaussian(3, 512)
    out = quantize(x, qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert out.dtype == np.uint8
    assert out.shape == (3, 512 // block * type_size)
    assert out.shape == gguf.quants.quant_shape_to_byte_shape(x.shape, qtype)


def test_float_types_match_gguf_forms():
    x = _gaussian(4, 64)
    assert quantize(x, Q.F32).dtype == np.float32
    np.testing.assert_array_equal(quantize(x, Q.F32), x.numpy())
    assert quantize(x, Q.F16).dtype == np.float16
    np.testing.assert_array_equal(quantize(x, Q.F16), x.numpy().astype(np.float16))
    bf16 = quantize(x, Q.BF16)
    np.testing.assert_array_equal(bf16, gguf.quants.quantize(x.numpy(), Q.BF16))
    np.testing.assert_allclose(gguf.quants.dequantize(bf16, Q.BF16), x.numpy(), rtol=2**-8)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_three_d_tensor_keeps_leading_dims(qtype):
    x = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(1))
    out = quantize(x, qtype)
    assert out.shape == (2, 3, gguf.quants.quant_shape_to_byte_shape((256,), qtype)[0])
    np.testing.assert_array_equal(out.reshape(6, -1), quantize(x.reshape(6, 256), qtype))


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q3_K, Q.Q4_0], ids=lambda t: t.name)
def test_chunking_does_not_change_bytes(qtype):
    x = _gaussian(8, 768, seed=2)
    np.testing.assert_array_equal(quantize(x, qtype), quantize(x, qtype, chunk_elements=256))


# ------------------------------------------------------------------------------------------
# legacy types: gguf-py reproduces ggml's reference bit for bit, so must we
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda t: t.name)
def test_legacy_types_byte_identical_to_gguf_py(qtype):
    x = _gaussian(16, 1024, seed=3) * 3.0
    x[0, :32] = 0.0  # an all-zero block
    x[1, 5] = 40.0  # an outlier
    np.testing.assert_array_equal(quantize(x, qtype), gguf.quants.quantize(x.numpy(), qtype))


# ------------------------------------------------------------------------------------------
# reconstruction error
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_gaussian_rmse_in_band(qtype):
    x = _gaussian(64, 1024)
    rmse = _rmse(_roundtrip(x, qtype), x.numpy())
    expected = EXPECTED_RMSE[qtype]
    assert 0.9 * expected < rmse < 1.06 * expected, f"{qtype.name}: rmse {rmse:.5f}, expected ~{expected}"


def test_rmse_falls_with_bits():
    x = _gaussian(16, 1024, seed=4)
    order = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0]
    errors = [_rmse(_roundtrip(x, t), x.numpy()) for t in order]
    assert errors == sorted(errors, reverse=True)
    assert errors[0] / errors[-1] > 40


# where each K-type keeps its per-group scale bytes inside a block
SCALE_BYTES = {Q.Q2_K: (0, 16), Q.Q3_K: (96, 108), Q.Q4_K: (4, 16), Q.Q5_K: (4, 16), Q.Q6_K: (192, 208)}


def _worst_group_error(x: torch.Tensor, raw: np.ndarray, qtype: Q, group: int) -> float:
    y = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).view(x.shape)
    err = (y - x).view(-1, group).pow(2).mean(-1).sqrt()
    return (err / x.view(-1, group).pow(2).mean(-1).sqrt()).max().item()


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_each_group_keeps_its_own_scale(qtype):
    """Groups whose magnitudes differ by up to 8x: every group must come back with an error
    relative to its own size close to the gaussian band. A scale stored in the wrong slot or a
    6-bit scale packed wrongly breaks this by an order of magnitude, as the corrupted copy shows."""
    group = 16 if qtype in (Q.Q2_K, Q.Q3_K, Q.Q6_K) else 32
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 512, generator=g)
    magnitude = 2.0 ** torch.empty(x.numel() // group).uniform_(0.0, 3.0, generator=g)
    x = (x.view(-1, group) * magnitude[:, None]).view(32, 512)
    raw = quantize(x, qtype)
    bound = 2.5 * EXPECTED_RMSE[qtype]
    assert _worst_group_error(x, raw, qtype, group) < bound
    if qtype in SCALE_BYTES:
        lo, hi = SCALE_BYTES[qtype]
        broken = raw.reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1]).copy()
        broken[:, lo:hi] = broken[:, lo:hi][:, ::-1]
        assert _worst_group_error(x, broken.reshape(raw.shape), qtype, group) > 4 * bound


# ------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_all_zero_block_decodes_to_zero(qtype):
    x = torch.zeros(2, 256)
    assert np.all(_roundtrip(x, qtype) == 0.0)


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
def test_all_zero_k_block_is_all_zero_bytes(qtype):
    assert not quantize(torch.zeros(1, 256), qtype).any()


@pytest.mark.parametrize(
    ("first", "rest", "min_bytes"), [(-0.0, 0.0, [0x00, 0x80]), (0.0, -0.0, [0x00, 0x00])]
)
def test_signed_zeros_give_the_reference_scale_bytes(first, rest, min_bytes):
    """ggml starts its max search from +0.0, so an all-zero Q4_0 block stores d = +0/-8 = -0.0
    (fp16 0x8000) whatever the zeros' sign; Q4_1 keeps the first zero it meets as the min."""
    block = torch.full((1, 32), rest)
    block[0, 0] = first
    assert quantize(block, Q.Q4_0)[0, :2].tolist() == [0x00, 0x80]
    assert quantize(block, Q.Q4_1)[0, 2:4].tolist() == min_bytes


@pytest.mark.parametrize("value", [0.5, -0.5, 1e-3])
@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_constant_block(qtype, value):
    x = torch.full((1, 256), value)
    y = _roundtrip(x, qtype)
    # Q6_K's super-scale is value/4096 and lands in fp16's subnormal range for tiny values
    tol = {Q.Q2_K: 0.1, Q.Q3_K: 0.1, Q.Q6_K: 0.03}.get(qtype, 0.02) * abs(value)
    np.testing.assert_allclose(y, value, atol=tol)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_huge_outlier_stays_finite_and_close(qtype):
    x = _gaussian(2, 256, seed=6)
    x[0, 17] = 1e4
    x[1, 200] = -3e4
    y = _roundtrip(x, qtype)
    assert np.isfinite(y).all()
    assert abs(y[0, 17] - 1e4) / 1e4 < 0.1
    assert abs(y[1, 200] + 3e4) / 3e4 < 0.1


def test_half_precision_input_is_accepted():
    x = _gaussian(4, 256).to(torch.bfloat16)
    np.testing.assert_array_equal(quantize(x, Q.Q4_K), quantize(x.float(), Q.Q4_K))


def test_rejects_bad_rows_and_values():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(torch.randn(2, 320), Q.Q4_K)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(torch.tensor([[float("nan")] * 32]), Q.Q8_0)
    with pytest.raises(ValueError, match="not supported"):
        quantize(torch.randn(2, 256), Q.IQ2_XXS)


# ------------------------------------------------------------------------------------------
# methods, file types, type mixes
# ------------------------------------------------------------------------------------------


def test_resolve_methods_aliases_and_errors():
    assert resolve_quantization_methods(None, torch.float16) == ["q8_0"]
    assert resolve_quantization_methods("Q4_K_M", torch.float16) == ["q4_k_m"]
    assert resolve_quantization_methods(
        ["quantized", "fast_quantized", "q4_k", "q5_k", "q3_k", "q8_0"], torch.float16
    ) == ["q4_k_m", "q8_0", "q5_k_m", "q3_k_m"]
    assert resolve_quantization_methods("not_quantized", torch.bfloat16) == ["bf16"]
    assert resolve_quantization_methods("not_quantized", torch.float16) == ["f16"]
    with pytest.raises(ValueError, match="q4_k_m"):
        resolve_quantization_methods("q4_k_xl", torch.float16)


def test_file_types():
    assert file_type_for("q4_k_m") == FT.MOSTLY_Q4_K_M == 15
    assert file_type_for("quantized") == FT.MOSTLY_Q4_K_M
    assert file_type_for("q8_0") == FT.MOSTLY_Q8_0
    assert file_type_for("bf16") == FT.MOSTLY_BF16
    assert file_type_for("f32") == FT.ALL_F32
    assert {m: default_type_for(m) for m in ("q3_k_l", "q5_k_s", "q6_k")} == {
        "q3_k_l": Q.Q3_K,
        "q5_k_s": Q.Q5_K,
        "q6_k": Q.Q6_K,
    }
    assert len(SUPPORTED_METHODS) == 17


def _fake_llama(n_layers: int, hidden: int = 512, ffn: int = 1024, vocab: int = 1000):
    """GGUF tensor names and torch shapes of a small llama-like model."""
    tensors = [("token_embd.weight", (vocab, hidden)), ("output_norm.weight", (hidden,))]
    tensors.append(("output.weight", (vocab, hidden)))
    for i in range(n_layers):
        tensors += [
            (f"blk.{i}.attn_norm.weight", (hidden,)),
            (f"blk.{i}.attn_q.weight", (hidden, hidden)),
            (f"blk.{i}.attn_k.weight", (hidden // 4, hidden)),
            (f"blk.{i}.attn_v.weight", (hidden // 4, hidden)),
            (f"blk.{i}.attn_output.weight", (hidden, hidden)),
            (f"blk.{i}.ffn_norm.weight", (hidden,)),
            (f"blk.{i}.ffn_gate.weight", (ffn, hidden)),
            (f"blk.{i}.ffn_up.weight", (ffn, hidden)),
            (f"blk.{i}.ffn_down.weight", (hidden, ffn)),
        ]
    return tensors


def _mix(method: str, n_layers: int = 16, **kw) -> dict[str, Q]:
    mixer = TypeMixer(method, n_layers=n_layers, n_head=16, n_head_kv=kw.pop("n_head_kv", 4), **kw)
    return {name: mixer.type_for(name, shape) for name, shape in _fake_llama(n_layers)}


def _layers_with(types: dict[str, Q], role: str, qtype: Q) -> list[int]:
    return sorted(int(n.split(".")[1]) for n, t in types.items() if f".{role}." in n and t == qtype)


def test_q4_k_m_mix():
    t = _mix("q4_k_m")
    more_bits = [0, 1, 4, 7, 10, 13, 14, 15]  # first/last eighth and every third layer between
    assert _layers_with(t, "attn_v", Q.Q6_K) == more_bits
    assert _layers_with(t, "ffn_down", Q.Q6_K) == more_bits
    assert _layers_with(t, "attn_v", Q.Q4_K) == sorted(set(range(16)) - set(more_bits))
    assert t["output.weight"] == Q.Q6_K
    assert t["token_embd.weight"] == Q.Q4_K
    assert t["output_norm.weight"] == t["blk.3.attn_norm.weight"] == Q.F32
    for role in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
        assert _layers_with(t, role, Q.Q4_K) == list(range(16))


def test_q3_k_and_q2_k_mixes():
    t = _mix("q3_k_m", n_layers=32)
    assert _layers_with(t, "attn_v", Q.Q5_K) == [0, 1]
    assert _layers_with(t, "ffn_down", Q.Q5_K) == [0, 1]
    assert _layers_with(t, "ffn_down", Q.Q4_K) == list(range(2, 32))
    assert _layers_with(t, "attn_output", Q.Q4_K) == list(range(32))
    assert t["blk.5.attn_q.weight"] == Q.Q3_K
    t = _mix("q3_k_l")
    assert {t["blk.9.attn_v.weight"], t["blk.9.ffn_down.weight"], t["blk.9.attn_output.weight"]} == {Q.Q5_K}
    t = _mix("q3_k_s")
    assert t["blk.0.attn_v.weight"] == t["blk.0.ffn_down.weight"] == Q.Q3_K
    assert t["output.weight"] == Q.Q6_K
    t = _mix("q2_k")  # GQA 4 -> attn_v gets Q4_K
    assert t["blk.3.attn_v.weight"] == Q.Q4_K
    assert t["blk.3.ffn_down.weight"] == t["blk.3.attn_output.weight"] == Q.Q3_K
    assert t["blk.3.ffn_up.weight"] == t["token_embd.weight"] == Q.Q2_K
    assert _mix("q2_k", n_head_kv=16)["blk.3.attn_v.weight"] == Q.Q3_K


def test_q4_k_s_q5_k_q6_k_and_legacy_mixes():
    t = _mix("q4_k_s")
    assert _layers_with(t, "attn_v", Q.Q5_K) == [0, 1, 2, 3]
    assert _layers_with(t, "ffn_down", Q.Q5_K) == [0, 1]
    t = _mix("q5_k_m")
    assert _layers_with(t, "attn_v", Q.Q6_K) == [0, 1, 4, 7, 10, 13, 14, 15]
    assert _mix("q5_k_s")["blk.0.attn_v.weight"] == Q.Q5_K
    assert set(_mix("q6_k").values()) == {Q.Q6_K, Q.F32}
    assert set(_mix("q8_0").values()) == {Q.Q8_0, Q.F32}
    t = _mix("q4_0")
    assert t["output.weight"] == Q.Q6_K and t["token_embd.weight"] == Q.Q4_0
    assert set(_mix("bf16").values()) == {Q.BF16, Q.F32}
    assert set(_mix("f16").values()) == {Q.F16, Q.F32}


def test_tied_embeddings_quantized_like_output():
    mixer = TypeMixer("q4_k_m", n_layers=4, n_head=8, n_head_kv=8, tied_embeddings=True)
    assert mixer.type_for("token_embd.weight", (1000, 512)) == Q.Q6_K
    assert mixer.type_for("token_embd.weight", (1000, 896)) == Q.Q8_0  # 896 % 256 != 0


def test_fallback_for_rows_not_divisible_by_256():
    kw = dict(n_layers=24, layer_index=3, n_head=14, n_head_kv=2)
    assert tensor_type_for("q4_k_m", "blk.3.attn_q.weight", (896, 896), **kw) == Q.Q5_0
    assert tensor_type_for("q4_k_m", "blk.3.ffn_down.weight", (896, 4864), **kw) == Q.Q4_K
    assert tensor_type_for("q5_k_s", "blk.3.attn_q.weight", (896, 896), **kw) == Q.Q5_1
    assert tensor_type_for("q6_k", "blk.3.attn_q.weight", (896, 896), **kw) == Q.Q8_0
    assert tensor_type_for("q2_k", "blk.3.attn_q.weight", (896, 896), **kw) == Q.Q4_0
    assert tensor_type_for("q4_k_m", "output.weight", (151936, 896), **kw) == Q.Q8_0
    assert tensor_type_for("q4_k_m", "blk.3.attn_q.weight", (100, 100), **kw) == Q.F16
    assert tensor_type_for("q8_0", "blk.3.attn_q.weight", (100, 100), **kw) == Q.F16


def test_moe_and_70b_rules():
    kw = dict(n_layers=32, layer_index=5, n_head=32, n_head_kv=8)
    assert tensor_type_for("q4_k_m", "blk.5.attn_v.weight", (1024, 4096), n_expert=8, **kw) == Q.Q8_0
    assert tensor_type_for("q4_k_m", "blk.5.attn_k.weight", (1024, 4096), n_expert=8, **kw) == Q.Q8_0
    assert tensor_type_for("q4_k_m", "blk.5.ffn_gate_inp.weight", (8, 4096), n_expert=8, **kw) == Q.F32
    big = TypeMixer("q4_k_m", n_layers=80, n_head=64, n_head_kv=8)
    assert big.type_for("blk.20.attn_v.weight", (1024, 8192)) == Q.Q5_K  # would be Q4_K below 70B


def test_layer_tensor_without_layer_index_is_an_error():
    with pytest.raises(ValueError, match="blk.N"):
        tensor_type_for(
            "q4_k_m", "attn_v.weight", (64, 256), n_layers=4, layer_index=None, n_head=4, n_head_kv=4
        )


# ------------------------------------------------------------------------------------------
# parity with llama.cpp's own quantizer (only where llama-cpp-python is installed)
# ------------------------------------------------------------------------------------------


def _ggml_quantize_chunk():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib_dir = pathlib.Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    if not candidates:
        pytest.skip("llama_cpp has no libggml-base library next to it")
    fn = ctypes.CDLL(str(candidates[0])).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    return fn


def _awkward_weights() -> torch.Tensor:
    """F16-representable rows that stress tie-breaking: plain gaussian, values on a coarse grid
    (exact .5 roundings, repeated values), 90% zeros of both signs, outliers, constant rows."""
    x = _gaussian(64, 1024, seed=7) * 0.02
    x[16:32] = torch.round(x[16:32] * 400) / 400
    x[32:48] = x[32:48] * (torch.rand(16, 1024, generator=torch.Generator().manual_seed(8)) < 0.1)
    x[48:56, ::97] *= 50.0
    x[56] = 0.01
    x[57] = -0.01
    x[58] = -0.0
    return x.half().float()


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_bytes_match_llama_cpp(qtype):
    """Blocks must be byte-identical to ggml's reference quantizer. The bar is 99%, not 100%,
    because a llama.cpp built for a CPU with FMA may contract a few float operations."""
    fn = _ggml_quantize_chunk()
    x = _awkward_weights()
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    src = np.ascontiguousarray(x.numpy())
    dst = np.zeros(x.numel() // block * type_size, dtype=np.uint8)
    fn(int(qtype), src.ctypes.data, dst.ctypes.data, 0, x.shape[0], x.shape[1], None)
    ours = quantize(x, qtype).reshape(-1, type_size)
    same = (ours == dst.reshape(-1, type_size)).all(axis=1).mean()
    assert same >= 0.99, f"{qtype.name}: only {same:.1%} of blocks identical to llama.cpp"
