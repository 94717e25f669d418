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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_is_reused_across_calls_and_sees_adapter_updates(dtype, saved_family):
    """Two calls whose prompts differ in length (one 64-column bucket) replay one captured graph
    and decode as eager does; after an in-place adapter update (what an optimizer step does) the
    replayed graph decodes as a fresh capture does."""
    from loris.lora import lora_modules

    _, folder = saved_family("llama")
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), dtype=dtype, load_in_4bit=False, device_map="cuda"
    )
    model = FastLanguageModel.get_peft_model(model, r=4, random_state=0)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    g = torch.Generator().manual_seed(0)
    batches = [
        engine.left_pad([torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths], 0)
        for lengths in ((20, 9, 14), (9, 4, 6))
    ]

    def run(ids, mask, decode):
        opts = engine.EngineOptions(decode=decode)
        return engine.run(model, ids, mask, n=2, max_new_tokens=12, options=opts).rows()

    graph = None
    for ids, mask in batches:
        assert run(ids, mask, "cuda_graph") == run(ids, mask, "eager")
        (step,) = engine.decode_steps(model).values()
        assert step.graph is not None and (graph is None or step.graph is graph)
        graph = step.graph
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.add_(torch.randn_like(m.lora_B) * 0.2)
    ids, mask = batches[0]
    replayed = run(ids, mask, "cuda_graph")
    (step,) = engine.decode_steps(model).values()
    assert step.graph is graph
    engine.release_decode_steps(model)
    recaptured = run(ids, mask, "cuda_graph")
    (fresh,) = engine.decode_steps(model).values()
    assert fresh.graph is not graph
    assert replayed == recaptured == run(ids, mask, "eager")
