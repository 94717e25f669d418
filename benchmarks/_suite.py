"""What the side-by-side trainer benchmarks (grpo_bench.py, dpo_bench.py) share: one process per
system, each writing its result JSON; a suite that runs the children one after another, records a
failing child with its error and goes on, then exits 1 naming what failed; the random checkpoints
built by ../shared/bench/anchor_bench.py; and step timers for loris' loop and transformers' Trainer.

Imported as ``from _suite import ...`` by the scripts beside it (run as ``python benchmarks/x.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("LORIS_BENCH_SHARED", HERE.parent.parent / "shared" / "bench"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def loris_step_timer(times: list[float], reset_peak: bool = False) -> Any:
    """A loris `TrainerCallback` appending each step's wall time (cuda synchronised) to ``times``,
    from the start of training to each step's end; ``reset_peak`` starts the peak-memory count
    when training starts (so loading the model is not in it)."""
    from loris.trainers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, state):
            sync()
            if reset_peak:
                _reset_peak()
            self.t = time.perf_counter()

        def on_step_end(self, state, logs):
            sync()
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    return StepTimer()


def hf_step_timer(times: list[float], reset_peak: bool = False) -> Any:
    """The same for transformers' Trainer (TRL, Unsloth): each step from its begin to its end."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            if reset_peak:
                _reset_peak()

        def on_step_begin(self, a, state, control, **kw):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t)

    return StepTimer()


def timed(fn: Callable, times: list[float]) -> Callable:
    """``fn`` wrapped to append each call's wall time (cuda synchronised) to ``times``."""

    def call(*a, **k):
        sync()
        t = time.perf_counter()
        out = fn(*a, **k)
        sync()
        times.append(time.perf_counter() - t)
        return out

    return call


def run_child(res: dict, fn: Callable[[], None], out: str | None, allow_cpu: bool = False) -> int:
    """Run one system's measurement ``fn`` (which fills ``res``), record a failure with its error
    instead of raising, write ``res`` as JSON to ``out`` and print it; the exit code says ok or not."""
    t0 = time.time()
    try:
        import torch

        if torch.cuda.is_available():
            res["gpu"] = torch.cuda.get_device_name()
        elif not allow_cpu:
            raise RuntimeError("no CUDA device: this benchmark measures GPU step time and memory")
        fn()
        res["ok"] = True
    except BaseException as e:  # noqa: BLE001 - recorded, then the exit code says it failed
        res.update(
            ok=False, error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-4000:]
        )
        traceback.print_exc()
    res["wall_s"] = round(time.time() - t0, 1)
    if out:
        Path(out).write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "traceback"}, default=str)[:3000], flush=True)
    return 0 if res["ok"] else 1


def checkpoint(work: Path, shape: str) -> Path:
    """``work/ckpt_<shape>``: the random checkpoint of that shape, built once by anchor_bench.py."""
    ckpt = work / f"ckpt_{shape}"
    if not (ckpt / "config.json").exists():
        maker = SHARED / "anchor_bench.py"
        if not maker.is_file():
            raise SystemExit(
                f"{maker} not found: set LORIS_BENCH_SHARED to the folder holding anchor_bench.py"
            )
        p = subprocess.run([sys.executable, str(maker), "make-ckpt", "--shape", shape, "--out", str(ckpt)])
        if p.returncode != 0:
            raise SystemExit(f"building the {shape}-shaped checkpoint failed (exit {p.returncode})")
    return ckpt


class Suite:
    """Runs ``script`` once per entry, each in its own process, collecting their JSON into one
    results file (rewritten after every child, so a crash keeps what ran)."""

    def __init__(self, script: str, out: str, workdir: str, timeout: float):
        self.script, self.out, self.work, self.timeout = script, Path(out), Path(workdir), timeout
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": {}}
        self.failed: list[str] = []

    def run(self, name: str, argv: list[str]) -> dict:
        """``python script *argv --out work/<name>.json``; its record (or why there is none)."""
        jpath = self.work / f"{name}.json"
        jpath.unlink(missing_ok=True)
        print(f"=== {name}", flush=True)
        t = time.time()
        try:
            rc = subprocess.run(
                [sys.executable, self.script, *argv, "--out", str(jpath)], timeout=self.timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        rec = (
            json.loads(jpath.read_text())
            if jpath.is_file()
            else {"ok": False, "error": f"no result (rc {rc})"}
        )
        rec["rc"], rec["suite_wall_s"] = rc, round(time.time() - t, 1)
        self.results["runs"][name] = rec
        if not rec.get("ok"):
            self.failed.append(f"{name}: {rec.get('error', rc)}")
        self.save()
        return rec

    def save(self) -> None:
        self.out.write_text(json.dumps(self.results, indent=1, default=str))

    def finish(self) -> int:
        self.save()
        print(f"results: {self.out}")
        if self.failed:
            print("FAILED:\n  " + "\n  ".join(self.failed), file=sys.stderr)
            return 1
        return 0
