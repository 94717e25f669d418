"""On CUDA the decode step is captured in a CUDA graph; its tokens must equal eager decoding (GPU only)."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris.generation import engine
from loris.generation.sampling import SamplingConfig
from tiny_models import VOCAB

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "qwen3", "phi3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_equals_eager(family, dtype, saved_family):
    _, folder = saved_family(family)
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), dtype=dtype, load_in_4bit=False, device_map="cuda"
    )
    model = FastLanguageModel.get_peft_model(model, r=4, random_state=0)  # rollouts run with live LoRA
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in (9, 4, 6)]
    ids, mask = engine.left_pad(prompts, 0)
    runs = {}
    for decode in ("eager", "cuda_graph"):
        res = engine.run(
            model, ids, mask, n=2, max_new_tokens=12, options=engine.EngineOptions(decode=decode)
        )
        runs[decode] = res.rows()
    assert runs["cuda_graph"] == runs["eager"]
    sampled = [
        engine.run(
            model,
            ids,
            mask,
            n=2,
            max_new_tokens=12,
            seed=5,
            sampling=SamplingConfig(do_sample=True, temperature=1.0, top_p=0.9),
            options=engine.EngineOptions(decode="cuda_graph"),
        ).rows()
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
