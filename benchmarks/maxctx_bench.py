#!/usr/bin/env python3
"""The longest batch-1 sequence that trains, loris beside Unsloth: every try in its own process.

Issue 18, item 4: Llama-3.1-8B-shaped QLoRA, batch 1, one card, searched up to 256k tokens and beyond
(Unsloth publishes 342,733 on 80 GB). One try = a fresh process that loads the model (lora_bench.py's
`load_system`: same checkpoint, LoRA r=16 on the 7 projections, Unsloth's ``"unsloth"`` offloaded
checkpointing, loris' ``loris-offload``), runs one training step at that length, and reports fit,
out-of-memory, timeout or error with its step time and peak memory. A fresh process per try keeps
a failed try's fragments and caches out of the next one.

Per system: ``--start`` first (``--lo`` is taken to fit: earlier runs trained 131,072 on both), then
doubling up to ``--hi`` while tries fit, then bisection to ``--grain`` tokens. Systems take turns,
fewest tries first, so when the ``--budget-s`` for the whole command runs out both have moved
alike; a try is not started when its estimated time (load + a step grown quadratically from the
longest fitting try, of this system or else of another) exceeds the budget left, and it is killed
at the budget's end. The JSON is rewritten after every try;
``--resume`` continues a search from an earlier JSON (one GPU command may not hold a whole search).

    python benchmarks/maxctx_bench.py search --systems loris-offload unsloth --out $OUT/maxctx.json
    python benchmarks/maxctx_bench.py search --resume $OUT/maxctx.json --out $OUT/maxctx2.json
    python benchmarks/maxctx_bench.py search --shape tiny --no-qlora --device cpu \\
        --systems loris --lo 64 --start 128 --hi 512 --grain 64 --out x.json    # CPU smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
GiB = 1024**3
MIN_TRY_S = 30.0  # no try starts with less budget left (a process must at least load the model)


def lora_bench():
    """benchmarks/lora_bench.py (its shapes, checkpoint maker and system loaders), loaded by path."""
    spec = importlib.util.spec_from_file_location("lora_bench", HERE / "lora_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ search
@dataclass
class Search:
    """One system's bracket: ``fit`` trains, ``nofit`` does not (None: not found yet)."""

    lo: int
    hi: int
    start: int
    grain: int
    fit: int = 0
    nofit: int | None = None
    done: str | None = None  # why the search ended: "bracketed", "cap", "error"
    tries: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fit = max(self.fit, self.lo)

    def _round(self, seq: int) -> int:
        return max(self.grain, seq // self.grain * self.grain)

    def next(self) -> int | None:
        """The next length to try, or None when the search is over (``done`` says why)."""
        if self.done is not None:
            return None
        tried = {t["seq"] for t in self.tries}
        if self.nofit is None:
            if self.fit >= self.hi:
                self.done = "cap"
                return None
            seq = self.start if self.start > self.fit and self.start not in tried else 2 * self.fit
            return min(self._round(seq), self.hi)
        if self.nofit - self.fit <= self.grain:
            self.done = "bracketed"
            return None
        mid = self._round((self.fit + self.nofit) // 2)
        if mid <= self.fit or mid >= self.nofit:
            self.done = "bracketed"
            return None
        return mid

    def record(self, seq: int, outcome: str, info: dict | None = None) -> None:
        """``outcome``: fit, oom, timeout (the step outran --try-timeout: too slow counts as no fit),
        killed (the command's budget ran out: undecided, a resumed search tries it again), error."""
        self.tries.append({"seq": seq, "outcome": outcome, **(info or {})})
        if outcome == "fit":
            self.fit = max(self.fit, seq)
        elif outcome in ("oom", "timeout"):
            self.nofit = seq if self.nofit is None else min(self.nofit, seq)
        elif outcome == "error":
            self.done = "error"

    def estimate_s(self, seq: int, default: float) -> float:
        """Seconds a try at ``seq`` may take: the longest fitting try's overhead plus its step time
        grown with the square of the length (attention), else ``default``."""
        fits = [t for t in self.tries if t["outcome"] == "fit" and t.get("step_s") and t.get("wall_s")]
        if not fits:
            return default
        best = max(fits, key=lambda t: t["seq"])
        overhead = best["wall_s"] - best["step_s"]
        return overhead + best["step_s"] * max(1.0, (seq / best["seq"]) ** 2)


# ------------------------------------------------------------------------------------------- child
def cmd_try(args) -> int:
    """One training step at ``--seq`` tokens in this process; prints ``RESULT {json}``."""
    res: dict = {"system": args.system, "seq": args.seq}
    t0 = time.time()
    try:
        if args.system == "unsloth":
            import unsloth  # noqa: F401  (must precede transformers)
        import torch

        bench = lora_bench()
        dev = torch.device(args.device)
        res["gpu"] = torch.cuda.get_device_name(0) if dev.type == "cuda" else None
        model = bench.load_system(args.system, args.ckpt, args.qlora, args.seq, 3407, res)
        if dev.type != "cuda":
            model.to(dev)
        model.train()
        res["load_s"] = round(time.time() - t0, 1)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=2e-4)
        ids = torch.randint(0, min(128000, model.config.vocab_size), (1, args.seq), device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            res["mem_after_load_gb"] = round(torch.cuda.memory_allocated() / GiB, 3)
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            res.update(outcome="fit", loss=round(float(loss), 4))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not isinstance(e, torch.cuda.OutOfMemoryError) and "out of memory" not in str(e).lower():
                raise
            res.update(outcome="oom", error=str(e)[:300])
        res["step_s"] = round(time.perf_counter() - t, 2)
        if dev.type == "cuda":
            res["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
            res["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
        res["versions"] = bench.versions()
    except BaseException as e:  # noqa: BLE001 - reported to the driver, which records it
        res.update(
            outcome="error", error=f"{type(e).__name__}: {e}"[:1500], traceback=traceback.format_exc()[-2000:]
        )
        traceback.print_exc()
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def run_try(args, system: str, ckpt: Path, seq: int, timeout: float) -> dict:
    """A try in a fresh process; killed after ``timeout`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "try", "--system", system, "--ckpt", str(ckpt)]
    cmd += ["--seq", str(seq), "--device", args.device] + (["--qlora"] if args.qlora else [])
    env = dict(os.environ)
    if args.alloc_conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "wall_s": round(time.time() - t, 1), "timeout_s": round(timeout, 1)}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if lines:
        res = json.loads(lines[-1][len("RESULT ") :])
    else:  # killed by the OS (host OOM) or a crash before the report
        res = {"outcome": "error", "error": f"rc {p.returncode}: {p.stderr[-1500:]}"}
    res.pop("system", None)
    res.pop("seq", None)
    res["wall_s"] = round(time.time() - t, 1)
    return res


# ------------------------------------------------------------------------------------------ driver
def _write(out: Path, doc: dict) -> None:
    tmp = out.with_name(".tmp-" + out.name)
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(out)


def cmd_search(args) -> int:
    bench = lora_bench()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if args.resume:
        doc = json.loads(Path(args.resume).read_text())
        searches = {name: Search(**s) for name, s in doc["searches"].items()}
        for s in searches.values():
            if s.done is None:
                s.tries = [t for t in s.tries if t["outcome"] != "killed"]
    else:
        doc = {"bench": "maxctx_bench", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        searches = {
            name: Search(lo=args.lo, hi=args.hi, start=args.start, grain=args.grain) for name in args.systems
        }
    doc.update(
        shape=args.shape,
        qlora=args.qlora,
        batch=1,
        device=args.device,
        alloc_conf=args.alloc_conf,
        host_cpu=bench.host_cpu(),
        budget_s=args.budget_s,
        try_timeout_s=args.try_timeout,
    )
    ckpt = Path(args.workdir) / args.shape
    if not (ckpt / "config.json").exists():
        t = time.time()
        bench.make_checkpoint(args.shape, ckpt)
        doc["checkpoint_s"] = round(time.time() - t, 1)
    failed = False
    while True:
        progressed = False
        # fewest decided tries first: a resumed search gives the system that waited its turn
        for name, s in sorted(searches.items(), key=lambda kv: _decided(kv[1])):
            seq = s.next()
            if seq is None:
                continue
            left = args.budget_s - (time.time() - t_start)
            # nothing known of this system yet: the others' estimate, else try (killed at the end)
            prior = max((o.estimate_s(seq, default=0.0) for o in searches.values()), default=0.0)
            need = s.estimate_s(seq, default=max(prior, MIN_TRY_S))
            if max(need, MIN_TRY_S) > left:
                print(f"[maxctx] {name}: {seq:,} needs ~{need:.0f}s, {left:.0f}s left: stopping", flush=True)
                continue
            print(f"[maxctx] {name}: trying {seq:,} tokens", flush=True)
            timeout = min(args.try_timeout, left)
            res = run_try(args, name, ckpt, seq, timeout)
            if res["outcome"] == "timeout" and timeout < args.try_timeout:
                res["outcome"] = "killed"  # the command's budget, not the try, ran out
            s.record(seq, res.pop("outcome"), res)
            last = s.tries[-1]
            print(f"[maxctx] {name}: {seq:,} -> {last['outcome']} ({last.get('wall_s')}s)", flush=True)
            failed |= last["outcome"] == "error"
            progressed = True
            _write(out, _summary(doc, searches))
        if not progressed:
            break
    doc = _summary(doc, searches)
    doc["wall_s"] = round(time.time() - t_start, 1)
    _write(out, doc)
    for name, r in doc["results"].items():
        print(f"[maxctx] {name}: max {r['max_seq']:,} tokens ({r['status']})", flush=True)
    print(f"results: {out}")
    return 1 if failed else 0


def _decided(search: Search) -> int:
    return sum(t["outcome"] != "killed" for t in search.tries)


def _summary(doc: dict, searches: dict[str, Search]) -> dict:
    doc["searches"] = {name: asdict(s) for name, s in searches.items()}
    results = {}
    for name, s in searches.items():
        at_max = [t for t in s.tries if t["outcome"] == "fit" and t["seq"] == s.fit]
        results[name] = {
            "max_seq": s.fit,
            "first_no_fit": s.nofit,
            "status": s.done or "unfinished (resume to continue)",
            "peak_mem_gb_at_max": at_max[-1].get("peak_mem_gb") if at_max else None,
            "step_s_at_max": at_max[-1].get("step_s") if at_max else None,
            "lo_assumed": s.lo if not at_max else None,
        }
    doc["results"] = results
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("try", help="one step at --seq tokens (run by search)")
    t.add_argument("--system", required=True)
    t.add_argument("--ckpt", required=True)
    t.add_argument("--seq", type=int, required=True)
    t.add_argument("--qlora", action="store_true")
    t.add_argument("--device", default="cuda")
    s = sub.add_parser("search")
    s.add_argument("--systems", nargs="+", default=["loris-offload", "unsloth"])
    s.add_argument("--shape", default="8b")
    s.add_argument("--no-qlora", dest="qlora", action="store_false", help="16-bit base (default QLoRA)")
    s.add_argument("--lo", type=int, default=131072, help="a length taken to fit (not tried)")
    s.add_argument("--start", type=int, default=262144, help="the first length tried")
    s.add_argument("--hi", type=int, default=524288, help="the cap")
    s.add_argument("--grain", type=int, default=8192)
    s.add_argument("--try-timeout", type=float, default=540.0, help="seconds one try may take")
    s.add_argument("--budget-s", type=float, default=570.0, help="seconds for the whole command")
    s.add_argument(
        "--alloc-conf", default="expandable_segments:True", help="PYTORCH_CUDA_ALLOC_CONF for every try"
    )
    s.add_argument("--workdir", default="/dev/shm/loris-bench")
    s.add_argument("--device", default="cuda")
    s.add_argument("--resume", help="an earlier JSON of this command: continue its searches")
    s.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "maxctx.json"))
    args = ap.parse_args(argv)
    return cmd_try(args) if args.cmd == "try" else cmd_search(args)


if __name__ == "__main__":
    sys.exit(main())
