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
