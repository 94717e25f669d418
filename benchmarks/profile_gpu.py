#!/usr/bin/env python3
"""Where the GPU time goes: torch.profiler tables for a LoRA training step and a decode loop.

    python benchmarks/profile_gpu.py train --ckpt DIR --out OUT/   # 1B LoRA b4x2048 step
    python benchmarks/profile_gpu.py train --ckpt DIR --out OUT/ --qlora --batch 2 [--checkpointing offload]
    python benchmarks/profile_gpu.py decode --ckpt DIR --out OUT/ [--lora]   # engine, batch 8

Each writes a kernel table (CUDA time, sorted) and a per-step wall/GPU-busy summary, so a gap
between them (launch-bound) is visible. Checkpoints come from lora_bench.py / anchor_bench.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _profile(fn, steps: int, out: Path, name: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / steps
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=90)
    (out / f"{name}_kernels.txt").write_text(table)
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in events) / 1e6 / steps  # us -> s (overlap ignored)
    print(table[:6000])
    return {"wall_s_per_step": wall, "kernel_s_per_step": busy, "kernels_per_step": len(events) / steps}


def train(args) -> dict:
    import torch

    from loris import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        args.ckpt, max_seq_length=2048, dtype=torch.bfloat16, load_in_4bit=args.qlora
    )
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, use_gradient_checkpointing=args.checkpointing
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    ids = torch.randint(0, 128000, (args.batch, args.seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    res = {"tokens_per_s": args.batch * args.seq * 5 / (time.perf_counter() - t)}
    res.update(_profile(step, 2, Path(args.out), f"train_{args.checkpointing}{'_qlora' * args.qlora}"))
    return res


def decode(args) -> dict:
    import torch

    from loris import FastLanguageModel
    from loris.generation import engine

    model, _ = FastLanguageModel.from_pretrained(args.ckpt, dtype=torch.bfloat16, load_in_4bit=False)
    if args.lora:
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16)
    ids = torch.randint(10, 120000, (args.batch, 128))
    opts = engine.EngineOptions(decode="auto")

    def gen():
        engine.run(model, ids, max_new_tokens=args.new, options=opts)

    gen()
    torch.cuda.synchronize()
    t = time.perf_counter()
    gen()
    torch.cuda.synchronize()
    res = {"tokens_per_s": args.batch * args.new / (time.perf_counter() - t)}
    res.update(_profile(gen, 1, Path(args.out), f"decode_b{args.batch}_lora{int(args.lora)}"))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["train", "decode"])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--qlora", action="store_true", help="train: NF4 base (the 8B setting uses --batch 2)")
    ap.add_argument("--checkpointing", default="true", choices=["true", "offload"])
    args = ap.parse_args()
    args.checkpointing = True if args.checkpointing == "true" else "offload"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.batch is None:
        args.batch = 4 if args.what == "train" else 8
    res = train(args) if args.what == "train" else decode(args)
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
