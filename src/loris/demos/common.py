"""What `loris demo` (SFT), `loris demo grpo` and `loris demo dpo` share in how they start: their
settings from the command line's arguments, loading the model with a LoRA adapter, and how many
CPU threads to use."""

from __future__ import annotations

import argparse
import contextlib
import os
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


def free_cpu_threads() -> int | None:
    """How many threads torch should use on this CPU now, or None to keep its default.

    torch's CPU threads meet at a barrier after every op; when other processes already keep the
    cores busy, each barrier waits for a thread the OS has put aside, and a step of small ops runs
    many times slower than on one thread (measured on the 2-core machine with its load average at
    5: a DPO step of SmolLM2 on 8 sequences took 3.8 s + 4.4 s forward/backward on one thread, 8.9 s
    + 19 s on two). So: the cores not already taken by the 1-minute load average, at least one, at
    most torch's default. ``OMP_NUM_THREADS`` set by the user wins (None)."""
    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return None
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = int(cores - os.getloadavg()[0] + 0.5)
    default = torch.get_num_threads()
    return max(1, min(default, free)) if free < default else None


@contextlib.contextmanager
def cpu_threads(device_type: str) -> Iterator[None]:
    """On CPU, run the block with `free_cpu_threads` threads (saying so), then restore the count."""
    import torch

    n = free_cpu_threads() if device_type == "cpu" else None
    before = torch.get_num_threads()
    if n is not None and n != before:
        load = os.getloadavg()[0]
        print(f"the CPU is busy (load average {load:.1f}): torch runs on {n} thread(s) instead of {before}; "
              "set OMP_NUM_THREADS to choose", flush=True)  # fmt: skip
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
