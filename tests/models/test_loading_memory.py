"""Loading streams tensor by tensor: peak anonymous memory stays near one copy of the weights.

The bf16 checkpoint is loaded as fp32, so every loaded byte is a fresh allocation (not a view of the
memory-mapped file) and a loader that held the whole state dict first would show two copies."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

_MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch
    from loris import FastLanguageModel

    def rss_anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    peak = [0]
    stop = False
    def watch():
        while not stop:
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.002)
    from transformers import CONFIG_MAPPING, AutoTokenizer  # imports and the tokenizer are not weights
    AutoTokenizer.from_pretrained(sys.argv[1])
    CONFIG_MAPPING["llama"]
    base = rss_anon()
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    model, _ = FastLanguageModel.from_pretrained(sys.argv[1], load_in_4bit=False, dtype=torch.float32, device_map="cpu")
    stop = True
    t.join()
    peak[0] = max(peak[0], rss_anon())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"base": base, "peak": peak[0], "weights": weights}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_16bit_load_peak_memory_is_about_one_copy(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import tiny_tokenizer

    cfg = LlamaConfig(
        vocab_size=160,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size="100MB")
    tiny_tokenizer().save_pretrained(tmp_path)
    size = sum(p.numel() * 4 for p in model.parameters())  # loaded as fp32: every byte is a new allocation
    del model
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path)], capture_output=True, text=True, check=True
    )
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    grown = stats["peak"] - stats["base"]
    print(f"weights {size / 2**20:.0f} MiB, peak anonymous growth {grown / 2**20:.0f} MiB")
    assert stats["weights"] == size
    assert grown < 1.35 * size  # one copy plus one tensor in flight, not two copies
