"""Shared timing, memory and reporting helpers for the kernel benchmarks (CUDA only).

Each op module builds, per shape, a few providers (``loris`` = the Triton path, ``reference`` = the
plain-PyTorch definition, ``compiled`` = ``torch.compile`` of that reference) and measures the
forward alone and forward+backward with ``triton.testing.do_bench`` (median and 20/80 percentiles,
ms) plus the peak memory one call allocates above what was live before it (MiB).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "benchmarks" / "results"

# Llama-3.2-1B and Llama-3.1-8B; 4 sequences of 2048 tokens per step.
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "llama-3.2-1b": {
        "hidden": 2048,
        "intermediate": 8192,
        "q_heads": 32,
        "kv_heads": 8,
        "head_dim": 64,
        "vocab": 128256,
    },
    "llama-3.1-8b": {
        "hidden": 4096,
        "intermediate": 14336,
        "q_heads": 32,
        "kv_heads": 8,
        "head_dim": 128,
        "vocab": 128256,
    },
}
BATCH, SEQ = 4, 2048


def ensure_importable() -> None:
    """Let the scripts run from a checkout without ``pip install -e .``."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def _sync_time(
    fn: Callable[[], Any], grad_to_none: Sequence[torch.Tensor] | None
) -> tuple[float, float, float]:
    from triton.testing import do_bench

    p50, p20, p80 = do_bench(fn, grad_to_none=list(grad_to_none or []), quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def peak_memory_mib(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def fwd_bwd(
    fn: Callable[[], Any], grads: Callable[[Any], Sequence[torch.Tensor]] | None = None
) -> Callable[[], None]:
    """Wrap a forward into forward+backward with a fixed upstream gradient per output."""
    cache: dict[str, list[torch.Tensor]] = {}

    def run() -> None:
        out = fn()
        outs = list(out) if isinstance(out, tuple) else [out]
        if "g" not in cache:
            cache["g"] = list(grads(out)) if grads else [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, cache["g"])

    return run


def measure(
    op: str,
    shape: str,
    providers: dict[str, Callable[[], Any]],
    *,
    leaves: Sequence[torch.Tensor] = (),
    backward: bool = True,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Time and measure every provider, forward and (if ``backward``) forward+backward."""
    rows = []
    for provider, fwd in providers.items():
        modes = {"fwd": fwd}
        if backward:
            modes["fwd+bwd"] = fwd_bwd(fwd)
        for mode, fn in modes.items():
            try:
                # Forwards run with autograd recording, as in training (saved tensors count).
                fn()  # compile / autotune outside the timed region
                ms = _sync_time(fn, leaves)
                mem = peak_memory_mib(fn)
                for leaf in leaves:
                    leaf.grad = None
                row = {
                    "ms": round(ms[0], 4),
                    "ms_p20": round(ms[1], 4),
                    "ms_p80": round(ms[2], 4),
                    "peak_mib": round(mem, 1),
                }
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row = {"ms": None, "ms_p20": None, "ms_p80": None, "peak_mib": None, "error": "OOM"}
            rows.append(
                {"op": op, "shape": shape, "provider": provider, "mode": mode, **row, **(extra or {})}
            )
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """One line per (op, shape, mode): each provider's median ms and peak MiB, and loris' speed-up."""
    groups: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape"], r["mode"]), {})[r["provider"]] = r
    header = f"{'op':<22}{'shape':<34}{'mode':<9}{'provider':<11}{'ms':>10}{'peak MiB':>11}{'vs ref':>8}"
    print(header)
    print("-" * len(header))
    for (op, shape, mode), by_provider in groups.items():
        ref_ms = by_provider.get("reference", {}).get("ms")
        for provider, r in by_provider.items():
            speed = f"{ref_ms / r['ms']:.2f}x" if ref_ms and r["ms"] else ""
            ms = f"{r['ms']:.3f}" if r["ms"] is not None else r.get("error", "-")
            mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
            print(f"{op:<22}{shape:<34}{mode:<9}{provider:<11}{ms:>10}{mem:>11}{speed:>8}")
    print()


def gpu_slug() -> str:
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def write_results(rows: Sequence[dict[str, Any]], path: Path | None = None) -> Path:
    """Merge ``rows`` into ``benchmarks/results/kernels-<date>-<gpu>.json`` (rows of the same ops are
    replaced, others kept), written to a temporary file and renamed into place."""
    path = path or RESULTS_DIR / f"kernels-{datetime.date.today().isoformat()}-{gpu_slug()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    ops = {r["op"] for r in rows}
    old = json.loads(path.read_text())["results"] if path.exists() else []
    doc = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "cuda": torch.version.cuda,
        "batch_tokens": f"{BATCH}x{SEQ}",
        "results": [r for r in old if r["op"] not in ops] + list(rows),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


def main_for(run: Callable[[], list[dict[str, Any]]]) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("kernel benchmarks need a CUDA GPU")
    rows = run()
    print_table(rows)
    print(f"wrote {write_results(rows)}")
