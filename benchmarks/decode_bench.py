"""Where GRPO rollout time goes: batched decode with and without a live LoRA adapter, against the floor.

Issue 18 asks for rollouts at the decode floor (decode with a live adapter within 15% of decode
without). One process, one random Llama-3.2-1B-shaped model in bf16 (no checkpoint on disk), prompts
of random ids, no EOS, so every call decodes exactly ``--new`` tokens per row. Variants:

- ``none``:   the base model, no adapter;
- ``live``:   LoRA r=16 alpha 16 on the 7 projections, read on every step (GRPO's rollout path);
- ``merged``: the same adapter folded into a temporary copy (``EngineOptions(merge_lora=True)``;
  every call copies and merges anew and, with CUDA graphs, captures anew: that capture falls inside
  its decode time, the copy and merge inside ``call_s`` only),

each with every ``--decode`` mode (default: ``cuda_graph`` and ``eager`` on CUDA, ``eager`` on CPU).
Per variant: ms per decode step, decode tokens/s, whole-call seconds (the merged copy's
merge included), prefill seconds, peak memory. The floor is the bytes one decode step must read
(weights, the head once, plus the KV cache it attends over) divided by a measured device copy
bandwidth. ``--profile`` adds, per variant, torch.profiler's top kernels over the decode steps of
one call (the prefill excluded): milliseconds and launches per decode step, and the sum of all
kernel time per step next to the wall time per step (their gap is host / launch overhead).

    python benchmarks/decode_bench.py --out $OUT/decode_bench.json --profile           # on the GPU
    python benchmarks/decode_bench.py --tiny --device cpu --new 3 --repeat 1 --out x.json  # smoke

No timing is asserted anywhere; the CPU smoke test checks only the JSON's fields.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch


def _lora_bench():
    """benchmarks/lora_bench.py, loaded by path: its Llama-3.2-1B shape and LoRA targets are this one's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lora_bench", Path(__file__).resolve().parent / "lora_bench.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BENCH = _lora_bench()
TARGETS = _BENCH.TARGETS
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}
SHAPES = {
    # Llama-3.2-1B (lora_bench's and ../shared/bench/anchor_bench.py's "1b", grpo_bench's checkpoint)
    "1b": dict(_BENCH.SHAPES["1b"], vocab_size=_BENCH.VOCAB),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    ),
}


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    """A random `LorisModel` of ``shape`` built directly on ``device`` (weights N(0, 0.02), norms 1)."""
    from loris.face.model import LorisModel
    from loris.models.config import ModelConfig

    hf = dict(
        model_type="llama",
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_ROPE,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        **SHAPES[shape],
    )
    cfg = ModelConfig.from_hf(hf)
    torch.manual_seed(0)
    with torch.device(device):
        model = LorisModel(cfg).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
    model.requires_grad_(False)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, mib: int, repeat: int = 10) -> float:
    """Bytes per second of a device-to-device copy (read + write counted), best of ``repeat``."""
    n = mib * 2**20 // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / best


def step_bytes(model, batch: int, context: int) -> tuple[int, int]:
    """(weight bytes one decode step reads, KV-cache bytes at ``context`` columns). The embedding is
    only gathered (a few rows), so it counts once when tied to the head, not at all otherwise."""
    seen, weights = set(), 0
    embed = model.embed_tokens.weight
    for p in model.parameters():
        if p.data_ptr() in seen or (p is embed and not model.config.tie_word_embeddings):
            continue
        seen.add(p.data_ptr())
        weights += p.numel() * p.element_size()
    cfg = model.config
    kv = 2 * cfg.num_layers * batch * cfg.num_kv_heads * cfg.head_dim * context * embed.element_size()
    return weights, kv


def _ids(args, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (args.batch, args.prompt), generator=g)


def _call(model, args, opts, new: int, seed: int = 0, on_step=None):
    from loris.generation import engine

    return engine.run(
        model, _ids(args, model.config.vocab_size, seed), max_new_tokens=new, options=opts, on_step=on_step
    )


def measure(model, args, opts, device: torch.device) -> dict:
    """Warm-up call (CUDA-graph capture), then ``--repeat`` full calls; medians."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t = time.perf_counter()
    _call(model, args, opts, args.new)
    _sync(device)
    first = time.perf_counter() - t
    calls, decodes, prefills = [], [], []
    for r in range(args.repeat):
        _sync(device)
        t = time.perf_counter()
        res = _call(model, args, opts, args.new, seed=r + 1)
        _sync(device)
        calls.append(time.perf_counter() - t)
        decodes.append(res.decode_seconds)
        prefills.append(res.prefill_seconds)
    decode_s = statistics.median(decodes)
    steps = max(args.new - 1, 1)  # forwards after the first token (sampled from the prefill)
    return {
        "first_call_s": round(first, 4),
        "call_s": round(statistics.median(calls), 4),
        "prefill_s": round(statistics.median(prefills), 4),
        "decode_s": round(decode_s, 4),
        "ms_per_step": 1000 * decode_s / steps,
        "decode_tok_s": args.batch * steps / max(decode_s, 1e-9),
        "call_tok_s": args.batch * args.new / max(statistics.median(calls), 1e-9),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def _time_of(evt, device_side: bool) -> float:
    """Self time (µs) of a profiler average, under either name torch has used."""
    names = ("self_device_time_total", "self_cuda_time_total") if device_side else ("self_cpu_time_total",)
    for name in names:
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def profile_decode(model, args, opts, device: torch.device, trace: Path | None = None) -> dict:
    """torch.profiler over the decode steps of one call (started at the first token, so the prefill
    and a merged copy's merge stay outside): top kernels by total time, per decode step."""
    from torch.profiler import ProfilerActivity, profile

    new = args.profile_new
    steps = max(new - 1, 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    started = []

    def on_step(tok, done):
        if not started:
            _sync(device)
            prof.start()
            started.append(time.perf_counter())

    _call(model, args, opts, new, seed=99, on_step=on_step)
    _sync(device)
    wall = time.perf_counter() - started[0]
    prof.stop()
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    on_device = device.type == "cuda"
    rows = []
    for evt in prof.key_averages():
        if on_device and evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        total = _time_of(evt, on_device)
        if total <= 0:
            continue
        rows.append((total, evt.count, evt.key))
    rows.sort(reverse=True)
    busy = sum(r[0] for r in rows) if on_device else None
    note = None
    if on_device and not rows:
        note = (
            "the profiler saw no CUDA kernels (kernels inside CUDA graphs untraced?): see the eager variant"
        )
    return {
        "note": note,
        "decode_steps": steps,
        "wall_ms_per_step": 1000 * wall / steps,
        "kernel_ms_per_step": busy / 1000 / steps if busy is not None else None,
        "launches_per_step": sum(r[1] for r in rows) / steps if on_device else None,
        "what": "CUDA kernels (self device time)" if on_device else "CPU ops (self CPU time)",
        "top": [
            {
                "name": key[:200],
                "ms_per_step": total / 1000 / steps,
                "calls_per_step": count / steps,
                "share": total / busy if busy else None,
            }
            for total, count, key in rows[: args.top]
        ],
    }


def run_bench(args) -> dict:
    from loris import FastLanguageModel
    from loris.generation import engine

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device here: use --tiny --device cpu for a smoke run")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    shape = "tiny" if args.tiny else "1b"
    decodes = args.decode or (["cuda_graph", "eager"] if device.type == "cuda" else ["eager"])
    res: dict = {
        "bench": "decode_bench",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "shape": shape,
        "dtype": args.dtype,
        "batch": args.batch,
        "prompt": args.prompt,
        "new": args.new,
        "repeat": args.repeat,
        "lora": {"r": args.r, "alpha": args.r, "targets": TARGETS},
        "variants": {},
    }
    model = build_model(shape, device, dtype)
    bw = copy_bandwidth(device, 64 if args.tiny else 1024)
    context = engine._bucket(args.prompt + args.new)  # the fixed-shape step attends over the bucket
    weights, kv_full = step_bytes(model, args.batch, context)
    _, kv_mean = step_bytes(model, args.batch, args.prompt + args.new // 2)
    res["floor"] = {
        "copy_bandwidth_gbs": bw / 1e9,
        "weight_bytes": weights,
        "kv_bytes_bucket": kv_full,
        "kv_bytes_mean_context": kv_mean,
        "ms_per_step_weights": 1000 * weights / bw,
        "ms_per_step_weights_kv": 1000 * (weights + kv_mean) / bw,
        "tok_s_weights": args.batch * bw / weights,
        "tok_s_weights_kv": args.batch * bw / (weights + kv_mean),
    }

    def variant(name: str, merge: bool, decode: str) -> None:
        key = f"{name}_{decode}"
        print(f"=== {key}", flush=True)
        rec: dict = {"adapter": name, "decode": decode, "merge_lora": merge}
        opts = engine.EngineOptions(decode=decode, merge_lora=merge)
        try:
            rec.update(measure(model, args, opts, device))
            if args.profile:
                trace = Path(args.trace_dir) / f"{key}.json" if args.trace_dir else None
                rec["profile"] = profile_decode(model, args, opts, device, trace)
            rec["ok"] = True
        except Exception as e:  # noqa: BLE001 - recorded; the other variants still run
            rec.update(
                ok=False, error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-3000:]
            )
            traceback.print_exc()
        finally:
            engine.release_decode_steps(model)
        res["variants"][key] = rec
        print(json.dumps({k: v for k, v in rec.items() if k not in ("profile", "traceback")}), flush=True)

    for decode in decodes:
        variant("none", False, decode)
    model = FastLanguageModel.get_peft_model(
        model,
        r=args.r,
        lora_alpha=args.r,
        target_modules=TARGETS,
        use_gradient_checkpointing="unsloth",  # as grpo_bench's policy; decoding runs in eval mode
        init_lora_weights=False,  # B random too: a live adapter that changes the output
    )
    for decode in decodes:
        variant("live", False, decode)
        variant("merged", True, decode)
    ratios = {}
    for decode in decodes:
        base = res["variants"].get(f"none_{decode}", {})
        for name in ("live", "merged"):
            other = res["variants"].get(f"{name}_{decode}", {})
            if base.get("ok") and other.get("ok"):
                ratios[f"{name}_vs_none_{decode}"] = other["ms_per_step"] / base["ms_per_step"]
        if base.get("ok"):
            ratios[f"none_{decode}_vs_floor"] = base["ms_per_step"] / res["floor"]["ms_per_step_weights_kv"]
    res["ms_per_step_ratios"] = ratios
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny random shape (CPU smoke runs)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument(
        "--decode",
        nargs="+",
        choices=["cuda_graph", "static", "eager"],
        help="decode modes (default: cuda_graph and eager on CUDA, eager on CPU)",
    )
    ap.add_argument("--profile", action="store_true", help="add a per-kernel table per variant")
    ap.add_argument("--profile-new", type=int, default=33, help="tokens of the profiled call")
    ap.add_argument("--top", type=int, default=30, help="rows of the per-kernel table")
    ap.add_argument("--trace-dir", help="with --profile: also a Chrome trace per variant here")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        res = run_bench(args)
        res["ok"] = all(v.get("ok") for v in res["variants"].values())
    except Exception as e:  # noqa: BLE001 - written to the JSON, then the exit code says it failed
        traceback.print_exc()
        res = {"bench": "decode_bench", "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    res["wall_s"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"results: {out}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
