"""What the Mixture-of-Experts family tests (Qwen3-MoE, gpt-oss) share: loading a tiny checkpoint,
a padded batch, a LoRA on attention and experts, and the comparison of every adapter gradient with
the PEFT model holding the same adapter."""

from __future__ import annotations

import torch

from loris import FastLanguageModel
from loris.lora import expert_lora_modules, lora_modules


def load(folder, **kw):
    kw = {"load_in_4bit": False, "dtype": torch.float32, "device_map": "cpu", **kw}
    return FastLanguageModel.from_pretrained(str(folder), **kw)


def batch(seed=0, b=2, n=10, side="right"):
    """Random ids with row 0 padded (3 tokens) on ``side``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 160, (b, n), generator=g)
    mask = torch.ones_like(ids)
    if side == "right":
        mask[0, -3:] = 0
    else:
        mask[0, :3] = 0
    return ids, mask


def lora(model, **kw):
    kw = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, "use_gradient_checkpointing": True, **kw}
    return FastLanguageModel.get_peft_model(model, **kw)


def assert_adapter_grads_equal_peft(model, peft) -> None:
    """Every loris adapter gradient (attention LoRA, expert adapters in PEFT's ``target_parameters``
    layout: lora_A (r·E, in), lora_B (out, r·E)) equals the PEFT model's, after both backwards."""
    theirs = dict(peft.named_parameters())
    for name, mod in lora_modules(model):
        for part in ("lora_A", "lora_B"):
            want = theirs[f"base_model.model.model.{name}.{part}.default.weight"].grad
            torch.testing.assert_close(getattr(mod, part).grad, want, rtol=1e-4, atol=1e-7)
    experts = dict(expert_lora_modules(model))
    assert experts
    for name, mod in experts.items():
        layer = name.split(".")[1]
        nested = "base_layer." if name.endswith("gate_up_lora") else ""
        prefix = f"base_model.model.model.layers.{layer}.mlp.experts.{nested}"
        e, r, i = mod.lora_A.shape
        want_a = theirs[prefix + "lora_A.default.weight"].grad
        want_b = theirs[prefix + "lora_B.default.weight"].grad
        assert want_a.abs().max() > 0
        torch.testing.assert_close(mod.lora_A.grad.reshape(e * r, i), want_a, rtol=1e-4, atol=1e-7)
        got_b = mod.lora_B.grad.permute(1, 2, 0).reshape(-1, r * e)
        torch.testing.assert_close(got_b, want_b, rtol=1e-4, atol=1e-7)


def assert_4bit_experts_match(folder, ids, mask, tmp_path, **hf_kw) -> None:
    """QLoRA on the experts: the NF4 model equals a 16-bit one holding the dequantized weights
    (loss and expert-adapter gradients), and its merged export goes into the original 16-bit
    experts (transformers reloads it with the 16-bit LoRA model's logits). ``hf_kw``: extra
    ``from_pretrained`` arguments for transformers."""
    from transformers import AutoModelForCausalLM

    from loris.quant import Linear4bit

    q, _ = load(folder, load_in_4bit=True)
    ex = q.layers[0].mlp.experts
    assert isinstance(ex.gate_up_proj_q, Linear4bit) and ex.gate_up_proj is None
    ref, _ = load(folder)
    with torch.no_grad():
        for a, b in zip(q.layers, ref.layers, strict=True):
            for name in ("gate_up_proj", "down_proj"):
                getattr(b.mlp.experts, name).copy_(a.mlp.experts.weight(name, torch.float32))
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(b.self_attn, proj).weight.copy_(getattr(a.self_attn, proj).dequantize(torch.float32))
    q, ref = lora(q), lora(ref)
    labels = ids.masked_fill(mask == 0, -100)
    losses = []
    for model in (q, ref):
        loss = model.train()(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(expert_lora_modules(q), expert_lora_modules(ref), strict=True):
        torch.testing.assert_close(a.lora_A.grad, b.lora_A.grad, rtol=1e-4, atol=1e-7, msg=name)
    out = q.eval().save_pretrained_merged(tmp_path / "merged", save_method="merged_32bit")
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, **hf_kw).eval()
    full, _ = load(folder)
    full = lora(full).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, full(ids).logits, rtol=1e-4, atol=1e-5)
