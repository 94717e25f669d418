"""What `loris demo` (SFT), `loris demo grpo` and `loris demo dpo` share in how they start: their
settings from the command line's arguments, loading the model with a LoRA adapter, and how many
CPU threads to use."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any


def settings_from_args(settings_cls: Any, args: argparse.Namespace, default_output_dir: str) -> Any:
    """``settings_cls(model, output_dir)`` (or its ``quick`` form with ``--quick``) for the bundled
    SmolLM2 unless ``--model`` names another, with ``--max-steps`` applied when given."""
    from loris.demos.assets import smollm2_gguf_path

    model = args.model or str(smollm2_gguf_path())
    output_dir = args.output_dir or default_output_dir
    settings = settings_cls.quick(model, output_dir) if args.quick else settings_cls(model, output_dir)
    if args.max_steps:
        settings.max_steps = args.max_steps
    return settings


def load_with_lora(model: str, r: int, seed: int, lora_alpha: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer): ``model`` loaded in 16/32 bit (256-token sequences) with a LoRA adapter of
    rank ``r`` (alpha ``r`` unless given) on every projection; activation checkpointing on CUDA
    only (a CPU has memory to spare, and recomputing would run every forward twice)."""
    from pathlib import Path

    from loris import FastLanguageModel

    print(f"loading {Path(model).name} ...", flush=True)
    loaded, tok = FastLanguageModel.from_pretrained(model, load_in_4bit=False, max_seq_length=256)
    loaded = FastLanguageModel.get_peft_model(
        loaded,
        r=r,
        lora_alpha=r if lora_alpha is None else lora_alpha,
        use_gradient_checkpointing=loaded.device.type == "cuda",
        random_state=seed,
    )
    return loaded, tok


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_share(window_s: float = 0.3) -> float | None:
    """The share of CPU time other processes take right now (0 idle .. 1 every core busy): from
    /proc/stat over ``window_s``, where there is one, else from the 1-minute load average; None
    where neither exists. The load average trails the present by a minute, so a demo started right
    after other work ended would read a busy machine from it."""
    try:
        samples = []
        for i in range(2):
            if i:
                time.sleep(window_s)
            with open("/proc/stat") as f:
                ticks = [
                    int(x) for x in f.readline().split()[1:9]
                ]  # user nice system idle iowait irq softirq steal
            samples.append((sum(ticks), ticks[3] + ticks[4]))
        total, idle = samples[1][0] - samples[0][0], samples[1][1] - samples[0][1]
        if total > 0:
            return min(1.0, max(0.0, 1.0 - idle / total))
    except (OSError, ValueError, IndexError):
        pass
    if hasattr(os, "getloadavg"):
        return min(1.0, os.getloadavg()[0] / _usable_cores())
    return None


def free_cpu_threads(busy: float | None = None) -> int | None:
    """How many threads torch should use on this CPU now, or None to keep its default.

    torch's CPU threads meet at a barrier after every op; when other processes already keep the
    cores busy, each barrier waits for a thread the OS has put aside, and a step of small ops runs
    many times slower than on one thread (measured on the 2-core machine with its load average at
    5: a DPO step of SmolLM2 on 8 sequences took 3.8 s + 4.4 s forward/backward on one thread, 8.9 s
    + 19 s on two). So: the cores other processes leave idle (`busy_share`), at least one, at most
    torch's default. ``OMP_NUM_THREADS`` set by the user wins (None)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    busy = busy_share() if busy is None else busy
    if busy is None:
        return None
    import torch

    free = int(_usable_cores() * (1.0 - busy) + 0.5)
    default = torch.get_num_threads()
    return max(1, min(default, free)) if free < default else None


@contextlib.contextmanager
def cpu_threads(device_type: str) -> Iterator[None]:
    """On CPU, run the block with `free_cpu_threads` threads (saying so), then restore the count."""
    import torch

    busy = busy_share() if device_type == "cpu" else None
    n = free_cpu_threads(busy) if busy is not None else None
    before = torch.get_num_threads()
    if n is not None and n != before:
        print(f"the CPU is busy ({busy:.0%} in use by other processes): torch runs on {n} thread(s) instead "
              f"of {before}; set OMP_NUM_THREADS to choose", flush=True)  # fmt: skip
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
