"""SmolLM2-135M + the demo adapter: loris (base GGUF + adapter) vs transformers on the merged 16-bit export.

Run `loris demo --output-dir /tmp/demo-full` first; prints the largest logit difference per dtype.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

from loris import FastLanguageModel
from loris.demos.dates import make_split


def compare(demo_dir: str, dtype: torch.dtype) -> dict:
    t = time.time()
    model, tok = FastLanguageModel.from_pretrained(f"{demo_dir}/adapter", load_in_4bit=False, dtype=dtype)
    model.eval()
    hf = AutoModelForCausalLM.from_pretrained(f"{demo_dir}/merged", dtype=dtype).eval()
    diffs, rels, peak = [], [], 0.0
    with torch.no_grad():
        for row in make_split(4, seed=99):
            text = tok.apply_chat_template(row["messages"], tokenize=False)
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
            ours, theirs = model(ids).logits.float(), hf(ids).logits.float()
            diffs.append((ours - theirs).abs().max().item())
            rels.append(((ours - theirs).norm() / theirs.norm()).item())
            peak = max(peak, ours.abs().max().item())
    return {
        "max_abs_logit_diff": max(diffs),
        "max_rel_l2": max(rels),
        "max_abs_logit": peak,
        "seconds": round(time.time() - t, 1),
    }


def main() -> int:
    demo_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/demo-full"
    results = {str(dt): compare(demo_dir, dt) for dt in (torch.float32, torch.bfloat16)}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
