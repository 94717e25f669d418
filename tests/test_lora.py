"""LoRA against PEFT on the transformers model (an independent implementation of the same math)."""

from __future__ import annotations

import json

import pytest
import torch

from loris import FastLanguageModel
from loris.lora import LoraLinear, lora_modules
from tiny_models import VOCAB


def _load(folder, **kw):
    kw.setdefault("load_in_4bit", False)
    model, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, device_map="cpu", **kw)
    return model, tok


def _ids(seed=0, b=2, n=10):
    return torch.randint(3, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


def _randomise_b(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _, m in lora_modules(model):
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi3"])
def test_loris_adapter_loads_in_peft_with_equal_logits(family, saved_family, tmp_path):
    from peft import PeftModel

    hf, folder = saved_family(family)
    model, _ = _load(folder)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    _randomise_b(model)
    model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == str(folder)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = _ids()
    with torch.no_grad():
        ref = peft_model(ids).logits
        got = model.eval()(ids).logits
    assert (got - ref).abs().max().item() <= 1e-4
    peft_model.unload()  # leave the shared fixture model as it was


@pytest.mark.parametrize("family", ["llama", "phi3"])
@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_loads_into_loris(family, rslora, saved_family, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _, folder = saved_family(family)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    targets = (
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        if family == "phi3"
        else ["q_proj", "v_proj", "down_proj"]
    )
    peft_model = get_peft_model(
        hf, LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False, use_rslora=rslora)
    )
    peft_model.save_pretrained(tmp_path / "peft")
    model, _ = _load(tmp_path / "peft")
    assert model.peft_config is not None
    ids = _ids(2)
    with torch.no_grad():
        ref = peft_model.eval()(ids).logits
        got = model.eval()(ids).logits
    assert (got - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3"])
def test_lora_gradients_match_peft(family, saved_family, tmp_path):
    from peft import PeftModel

    hf, folder = saved_family(family)
    model, _ = _load(folder)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=False)
    _randomise_b(model, seed=3)
    model.save_pretrained(tmp_path / "a")
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "a", is_trainable=True)
    ids = _ids(4)
    labels = ids.clone()
    labels[:, :3] = -100
    peft_model.train()
    model.train()
    peft_model(ids, labels=labels).loss.backward()
    model(ids, labels=labels).loss.backward()
    ours = {name: m for name, m in lora_modules(model)}
    checked = 0
    for name, p in peft_model.named_parameters():
        part = "lora_A" if ".lora_A." in name else "lora_B" if ".lora_B." in name else None
        if part is None:
            continue
        loris_name = name.split("base_model.model.model.")[1].split(f".{part}")[0]
        ours_grad = getattr(ours[loris_name], part).grad
        torch.testing.assert_close(ours_grad, p.grad, rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked == 2 * 7 * model.config.num_layers
    peft_model.unload()


def test_gradient_checkpointing_modes_give_identical_gradients(saved_family):
    _, folder = saved_family("gemma2")
    grads = {}
    for mode in (False, True, "offload", "unsloth"):
        model, _ = _load(folder)
        model = FastLanguageModel.get_peft_model(model, r=4, use_gradient_checkpointing=mode, random_state=0)
        _randomise_b(model)
        model.train()
        ids = _ids(5)
        model(ids, labels=ids).loss.backward()
        grads[mode] = torch.cat([m.lora_A.grad.flatten() for _, m in lora_modules(model)])
        assert model.layers[0].self_attn.q_proj.lora_A.grad is not None  # the first block is reached
    for mode in (True, "offload", "unsloth"):
        torch.testing.assert_close(grads[mode], grads[False], rtol=1e-5, atol=1e-7)


def test_qlora_trains_only_adapters(saved_family):
    _, folder = saved_family("llama")
    model, _ = _load(folder, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    ids = _ids(6)
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert torch.isfinite(loss)


def test_merge_and_unmerge_keep_outputs(saved_family):
    _, folder = saved_family("llama")
    model, _ = _load(folder)
    model = FastLanguageModel.get_peft_model(model, r=4)
    _randomise_b(model)
    model.eval()
    ids = _ids(7)
    with torch.no_grad():
        before = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
        for _, m in lora_modules(model):
            m.merge()
        merged = model(ids).logits
        for _, m in lora_modules(model):
            m.unmerge()
        after = model(ids).logits
    assert (before - base).abs().max() > 1e-3  # the adapter changes the output
    torch.testing.assert_close(merged, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_modules_to_save_round_trip_through_peft(saved_family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, folder = saved_family("llama3.2")  # tied embeddings
    # A copy of its own: PEFT's unload() does not undo modules_to_save on tied embeddings, and the
    # shared fixture model is the transformers oracle of other tests.
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model, _ = _load(folder)
    model = FastLanguageModel.get_peft_model(
        model, r=4, target_modules=["q_proj", "v_proj", "embed_tokens"], use_gradient_checkpointing=False
    )
    assert model.peft_config.modules_to_save == ["embed_tokens"]
    assert model.embed_tokens.weight.requires_grad and not model.lm_head.weight.requires_grad
    with torch.no_grad():
        model.embed_tokens.weight.add_(0.01)
    model.save_pretrained(tmp_path / "a")
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "a").eval()
    ids = _ids(8)
    with torch.no_grad():
        assert (model.eval()(ids).logits - peft_model(ids).logits).abs().max().item() <= 1e-4


def test_argument_validation(saved_family):
    _, folder = saved_family("llama")
    model, _ = _load(folder)
    with pytest.raises(TypeError, match="positive int"):
        FastLanguageModel.get_peft_model(model, r="8")
    with pytest.raises(ValueError, match="positive int"):
        FastLanguageModel.get_peft_model(model, r=0)
    with pytest.raises(ValueError, match="unknown target module 'qkv'.*q_proj"):
        FastLanguageModel.get_peft_model(model, target_modules=["qkv"])
    with pytest.raises(ValueError, match="modules_to_save"):
        FastLanguageModel.get_peft_model(model, modules_to_save=["norm"])
    with pytest.raises(ValueError, match="use_gradient_checkpointing"):
        FastLanguageModel.get_peft_model(model, use_gradient_checkpointing="sometimes")
    model = FastLanguageModel.get_peft_model(model, r=8)
    assert FastLanguageModel.get_peft_model(model, r=8) is model  # same arguments: kept, with a warning
    with pytest.raises(ValueError, match="different settings"):
        FastLanguageModel.get_peft_model(model, r=16)
    assert isinstance(model.layers[0].mlp.down_proj, LoraLinear)


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])  # q/k/v biases; GeGLU + soft-capping
@pytest.mark.parametrize("adapters", ["lora", "lora-off", "none"])
def test_packed_and_fused_paths_match_the_modules(family, adapters, saved_family, monkeypatch):
    """The CUDA fast paths (stacked q/k/v and gate/up GEMMs, fused LoRA) switched on for CPU: logits,
    gradients and greedy decoding (eager and the fixed-shape step) equal the per-module path."""
    import loris.lora as lora_mod
    from loris.generation import engine

    _, folder = saved_family(family)
    model, _ = _load(folder)
    if adapters != "none":
        model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
        _randomise_b(model)
    ids = _ids()

    def run(fast: bool):
        monkeypatch.setattr(lora_mod, "_fast", lambda x: fast)
        model.zero_grad()
        if adapters == "lora-off":
            for _, m in lora_modules(model):
                m.disabled = True
        logits = model(ids).logits
        grads = None
        if adapters == "lora":
            logits.square().mean().backward()
            grads = torch.cat([m.lora_A.grad.flatten() for _, m in lora_modules(model)])
        with torch.no_grad():
            eager = engine.run(model, ids, max_new_tokens=5, options=engine.EngineOptions(decode="eager"))
            static = engine.run(model, ids, max_new_tokens=5, options=engine.EngineOptions(decode="static"))
        for _, m in lora_modules(model):
            m.disabled = False
        return logits.detach(), grads, eager.tokens, static.tokens

    fast, ref = run(True), run(False)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-5)
    if adapters == "lora":
        torch.testing.assert_close(fast[1], ref[1], rtol=1e-4, atol=1e-6)
    assert torch.equal(fast[2], ref[2]) and torch.equal(fast[3], ref[3]) and torch.equal(fast[2], fast[3])
