"""Preference training on CUDA: the fast path (Triton kernels, fused LoRA, bf16 autocast, QLoRA,
offloaded checkpointing) gives the CPU reference's DPO loss and gradients, and QLoRA DPO trains."""

from __future__ import annotations

import pytest
import torch
from preference_testing import lora_grads, pair_rows, randomize_adapter

from loris import DPOConfig, DPOTrainer, FastLanguageModel

pytestmark = pytest.mark.gpu


def _step(folder, tmp_path, device: str, gc, padding_free: bool = False):
    model, tok = FastLanguageModel.from_pretrained(str(folder), load_in_4bit=False, dtype=torch.float32,
                                                   device_map=device)  # fmt: skip
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=gc)
    args = DPOConfig(
        output_dir=str(tmp_path / device), per_device_train_batch_size=4, padding_free=padding_free
    )
    trainer = DPOTrainer(model, args=args, train_dataset=pair_rows(4, seed=1), processing_class=tok)
    randomize_adapter(model, seed=2)
    model.train()
    batch = {k: v.to(device) for k, v in trainer.data_collator(list(trainer.train_dataset)).items()}
    loss = trainer.compute_loss(model, batch, 4)
    loss.backward()
    return loss.detach().cpu(), {k: g.cpu() for k, g in lora_grads(model).items()}


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
@pytest.mark.parametrize("gc", [False, "unsloth"])
def test_dpo_step_on_gpu_equals_cpu(saved_family, tmp_path, gc, padding_free):
    """The GPU step (padded, or packed rows with a block-diagonal attention mask) equals the CPU's
    padded one."""
    folder = saved_family("llama")[1]
    cpu_loss, cpu_grads = _step(folder, tmp_path, "cpu", False)
    gpu_loss, gpu_grads = _step(folder, tmp_path, "cuda", gc, padding_free)
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-4, atol=1e-5)
    for k, g in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[k], g, rtol=1e-3, atol=1e-5, msg=k)


def test_qlora_dpo_trains_in_bf16(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    model, tok = FastLanguageModel.from_pretrained(str(folder), load_in_4bit=True, dtype=torch.bfloat16)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing="unsloth")
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, bf16=True,
                     learning_rate=1e-2, logging_steps=1, save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = DPOTrainer(model, args=args, train_dataset=pair_rows(8, seed=3), processing_class=tok)
    trainer.train()
    log = trainer.state.log_history
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    assert log[-1]["rewards/margins"] != 0.0
