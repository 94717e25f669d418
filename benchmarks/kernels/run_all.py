"""Run the GPU kernel tests, then every kernel benchmark in one process; print the tables and write
``benchmarks/results/kernels-<date>-<gpu>.json``.

    python benchmarks/kernels/run_all.py                 # tests + all benchmarks
    python benchmarks/kernels/run_all.py --skip-tests    # benchmarks only
    python benchmarks/kernels/run_all.py --ops rms_norm,cross_entropy --skip-tests
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import ROOT, print_table, write_results  # noqa: E402

OPS = ("rms_norm", "add_rms_norm", "activations", "rope", "qk_norm_rope", "cross_entropy", "nf4")


def run_gpu_tests() -> int:
    """The kernel parity tests (CUDA cases) in a child pytest, so benchmarks don't inherit its state."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "kernels"), "-m", "gpu", "-q", "-rfE"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("run_all.py needs a CUDA GPU", file=sys.stderr)
        return 2
    status = 0
    if not args.skip_tests:
        status = run_gpu_tests()
        print(f"GPU tests {'passed' if status == 0 else 'FAILED'}", flush=True)
    if args.skip_bench:
        return status
    rows = []
    for op in filter(None, args.ops.split(",")):
        print(f"== benchmarking {op}", flush=True)
        try:
            op_rows = importlib.import_module(op).run()
        except Exception:  # keep going: one broken op must not hide the others' numbers
            traceback.print_exc()
            status = status or 1
            continue
        print_table(op_rows)
        rows += op_rows
        torch.cuda.empty_cache()
    if rows:
        print(f"wrote {write_results(rows)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
