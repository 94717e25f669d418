"""SmolLM2-135M + the demo adapter: loris (base GGUF + adapter) vs transformers loading the merged 16-bit export.

Run `loris demo --output-dir /tmp/demo-full` first; prints the max logit difference per dtype."""

import json
import time

import torch
from transformers import AutoModelForCausalLM

from loris import FastLanguageModel
from loris.demos.dates import make_split

res = {}
for dtype in (torch.float32, torch.bfloat16):
    t = time.time()
    model, tok = FastLanguageModel.from_pretrained("/tmp/demo-full/adapter", load_in_4bit=False, dtype=dtype)
    model.eval()
    hf = AutoModelForCausalLM.from_pretrained("/tmp/demo-full/merged", dtype=dtype).eval()
    rows = make_split(4, seed=99)
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    diffs, rel = [], []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
            a = model(ids).logits.float()
            b = hf(ids).logits.float()
            diffs.append((a - b).abs().max().item())
            rel.append(((a - b).norm() / b.norm()).item())
    res[str(dtype)] = {
        "max_abs_logit_diff": max(diffs),
        "max_rel_l2": max(rel),
        "max_abs_logit": a.abs().max().item(),
        "seconds": round(time.time() - t, 1),
    }
    print(dtype, res[str(dtype)], flush=True)
json.dump(res, open("/tmp/merged_check.json", "w"), indent=1)
