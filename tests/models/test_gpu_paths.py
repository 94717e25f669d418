"""On CUDA the Triton kernels run inside the model; they must match the reference path (GPU only)."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris.lora import lora_modules

pytestmark = pytest.mark.gpu


def _train_step(folder, monkeypatch, disable: bool, load_in_4bit: bool = False):
    if disable:
        monkeypatch.setenv("LORIS_DISABLE_KERNELS", "1")
    else:
        monkeypatch.delenv("LORIS_DISABLE_KERNELS", raising=False)
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.bfloat16, load_in_4bit=load_in_4bit, device_map="cuda"
    )
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, random_state=0)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B, std=0.02, generator=torch.Generator(device="cuda").manual_seed(0))
    ids = torch.randint(3, 160, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    labels = ids.clone()
    labels[:, :5] = -100
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids, labels=labels)
    out.loss.backward()
    grads = torch.cat([m.lora_A.grad.float().flatten() for _, m in lora_modules(model)])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model.eval()(ids).logits.float()
    return out.loss.detach().float(), grads, logits


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gemma3", "phi3"])
def test_kernels_match_reference_in_a_training_step(family, saved_family, monkeypatch):
    _, folder = saved_family(family)
    loss_k, grads_k, logits_k = _train_step(folder, monkeypatch, disable=False)
    loss_r, grads_r, logits_r = _train_step(folder, monkeypatch, disable=True)
    assert abs(loss_k.item() - loss_r.item()) <= 2e-2 * abs(loss_r.item())
    assert ((logits_k - logits_r).norm() / logits_r.norm()).item() < 2e-2
    assert ((grads_k - grads_r).norm() / grads_r.norm()).item() < 5e-2


def test_qlora_step_on_gpu(saved_family, monkeypatch):
    _, folder = saved_family("llama")
    loss, grads, logits = _train_step(folder, monkeypatch, disable=False, load_in_4bit=True)
    assert torch.isfinite(loss) and torch.isfinite(grads).all() and grads.abs().sum() > 0
