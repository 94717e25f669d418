#!/usr/bin/env python3
"""Host time per training step of checkpointing modes, on shapes so small that kernels cost nothing.

    python benchmarks/checkpoint_overhead.py [--layers 28] [--steps 30] [--device cpu|cuda]

A LoRA step on a GPU is bound by the host when the host cannot issue kernels as fast as the GPU
runs them (seen on 16-core H200 hosts for Qwen3-1.7B). This times the same tiny Qwen3-shaped model
(many layers, hidden 64) with loris' per-block recompute Function and with `torch.utils.checkpoint`
(non-reentrant) per block, alternating, and prints the median step time of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    import torch
    from torch.utils.checkpoint import checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    from loris import FastLanguageModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = AutoConfig.for_model(
        "qwen3", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=args.layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        model, _ = FastLanguageModel.from_pretrained(
            folder, dtype=torch.float32, load_in_4bit=False, device_map=args.device
        )
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=True)
    model.train()
    ours = model.gradient_checkpointing

    def torch_ckpt(block, x, cos, sin, mask):
        return checkpoint(block, x, cos, sin, mask, use_reentrant=False)

    ids = torch.randint(0, 256, (2, 64), device=args.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"loris recompute Function": [], "torch.utils.checkpoint": []}
    fns = {"loris recompute Function": ours, "torch.utils.checkpoint": torch_ckpt}
    for i in range(args.steps + 3):
        for name, fn in fns.items():
            model.gradient_checkpointing = fn
            sync()
            t = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= 3:
                times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name:<26} median {statistics.median(ts) * 1e3:7.2f} ms/step over {len(ts)} steps")


if __name__ == "__main__":
    main()
