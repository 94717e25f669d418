#!/usr/bin/env python3
"""Which order adds a LoRA update to a projection faster on this GPU.

    python benchmarks/lora_gemm_order.py [--tokens 8192]

"base first": ``y = x W^T`` then ``y += (x A^T) B^T`` (the update's GEMM reads and writes all of y).
"update first": ``y = (x A^T) B^T`` then ``y += x W^T`` (the base GEMM adds onto y in its epilogue).
Shapes are the projections of the Llama-3.2-1B and Llama-3.1-8B benchmark settings, forward
(x: tokens x in) and input-gradient (dy: tokens x out) directions, rank 16 per projection.
"""

from __future__ import annotations

import argparse
import json

SHAPES = {  # name: (in, out, stacked rank)
    "1b qkv": (2048, 3072, 48),
    "1b o": (2048, 2048, 16),
    "1b gate|up": (2048, 16384, 32),
    "1b down": (8192, 2048, 16),
    "8b qkv": (4096, 6144, 48),
    "8b gate|up": (4096, 28672, 32),
    "8b down": (14336, 4096, 16),
}


def _base_first(x, w, xa, b):
    return (x @ w.t()).addmm_(xa, b.t())


def _update_first(x, w, xa, b):
    return (xa @ b.t()).addmm_(x, w.t())


def _time(fn, reps: int = 30) -> float:
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[reps // 2] * 1e3  # median, us


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    t, dt, rows = args.tokens, torch.bfloat16, []
    print(f"{torch.cuda.get_device_name()}, {t} tokens, median of 30 (us)")
    print(f"{'projection':<12} {'dir':<4} {'base first':>11} {'update first':>13} {'ratio':>6}")
    for name, (k, n, r) in SHAPES.items():
        for direction in ("fwd", "dx"):
            kk, nn_ = (k, n) if direction == "fwd" else (n, k)  # dx = dy W: in and out swap roles
            x = torch.randn(t, kk, device="cuda", dtype=dt)
            w = torch.randn(nn_, kk, device="cuda", dtype=dt) / kk**0.5
            xa = torch.randn(t, r, device="cuda", dtype=dt)
            b = torch.randn(nn_, r, device="cuda", dtype=dt)

            ops = (x, w, xa, b)
            torch.testing.assert_close(_base_first(*ops), _update_first(*ops), rtol=2e-2, atol=2e-2)
            old, new = _time(lambda: _base_first(*ops)), _time(lambda: _update_first(*ops))  # noqa: B023
            rows.append(dict(projection=name, dir=direction, base_first_us=old, update_first_us=new))
            print(f"{name:<12} {direction:<4} {old:>11.1f} {new:>13.1f} {old / new:>6.2f}")
    print("RESULT " + json.dumps(rows))


if __name__ == "__main__":
    main()
