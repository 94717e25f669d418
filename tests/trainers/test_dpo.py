"""DPO on the shared loop: TRL's metric names in the logs, accumulation invariance, exact resume,
data-format errors, Unsloth's notebook spellings."""

from __future__ import annotations

import json

import pytest
import torch
from preference_testing import loris_lora, pair_rows

from loris import DPOConfig, DPOTrainer, PatchDPOTrainer

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")  # fmt: skip


def adapter_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(saved_family, out, rows, resume=None, **kw):
    model, tok = loris_lora(saved_family("llama")[1])
    base = dict(output_dir=str(out), logging_steps=1, save_strategy="no", disable_tqdm=True, optim="sgd",
                learning_rate=0.5, max_grad_norm=0.0, seed=3, lr_scheduler_type="constant")  # fmt: skip
    trainer = DPOTrainer(model, args=DPOConfig(**{**base, **kw}), train_dataset=rows, processing_class=tok)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, adapter_of(model)


def test_dpo_trains_and_logs_trl_metrics(saved_family, tmp_path):
    rows = pair_rows(8, seed=1)
    trainer, _ = run(saved_family, tmp_path, rows, per_device_train_batch_size=4, max_steps=6)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 7))
    for entry in log:
        assert all(k in entry for k in METRICS)
    assert log[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log σ(0)
    assert log[-1]["rewards/margins"] > 0.01 and log[-1]["loss"] < log[0]["loss"]  # it learns the preference
    assert (tmp_path / "loss.png").is_file()


def test_batch_4_equals_batch_2_times_accumulation_2(saved_family, tmp_path):
    rows = pair_rows(8, seed=2)
    common = dict(max_steps=2)
    a, wa = run(saved_family, tmp_path / "a", rows, per_device_train_batch_size=4, **common)
    b, wb = run(saved_family, tmp_path / "b", rows, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                **common)  # fmt: skip
    for la, lb in zip(a.state.log_history, b.state.log_history, strict=True):
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-5)
    for name, w in wa.items():
        torch.testing.assert_close(wb[name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_exact_resume(saved_family, tmp_path):
    rows = pair_rows(8, seed=3)
    kw = dict(per_device_train_batch_size=2, max_steps=4)
    _, whole = run(saved_family, tmp_path / "whole", rows, **kw)
    run(saved_family, tmp_path / "cut", rows, save_strategy="steps", save_steps=2, max_steps=2,
        per_device_train_batch_size=2)  # fmt: skip
    resumed, after = run(saved_family, tmp_path / "cut", rows, resume=True, save_strategy="steps", save_steps=2,
                         **kw)  # fmt: skip
    assert resumed.state.global_step == 4
    for name, w in whole.items():
        torch.testing.assert_close(after[name], w, rtol=1e-6, atol=1e-7, msg=name)


def test_missing_column_is_named(saved_family, tmp_path):
    model, tok = loris_lora(saved_family("llama")[1])
    rows = [{"prompt": "w5 w6", "good": " w7", "bad": " w8"}]
    with pytest.raises(ValueError, match=r"\['chosen', 'rejected'\].*rename_column"):
        DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path)), train_dataset=rows, processing_class=tok)


def test_unsloth_notebook_spellings(saved_family, tmp_path):
    assert PatchDPOTrainer() is None
    model, tok = loris_lora(saved_family("llama")[1])
    trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(output_dir=str(tmp_path)), beta=0.25,
                         train_dataset=pair_rows(2), tokenizer=tok, max_length=6, max_prompt_length=3)  # fmt: skip
    assert (trainer.args.beta, trainer.args.max_length, trainer.args.max_prompt_length) == (0.25, 6, 3)
    for row in trainer.train_dataset:
        assert len(row["prompt_ids"]) <= 3
    batch = trainer.data_collator(list(trainer.train_dataset))
    assert batch["input_ids"].shape[1] <= 6
    with pytest.raises(TypeError, match="unexpected arguments"):
        DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path)), train_dataset=pair_rows(2), tokenizer=tok,
                   betta=0.1)  # fmt: skip


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["lora", "qlora"])
def test_checkpointing_modes_give_the_same_step(saved_family, tmp_path, load_in_4bit):
    """QLoRA and the checkpointing modes change memory, not numbers: a DPO step's loss and adapter
    gradients are the same with per-block recompute, offloaded activations or neither."""
    from preference_testing import lora_grads, randomize_adapter

    from loris import FastLanguageModel

    results = []
    for gc in (False, True, "unsloth"):
        model, tok = FastLanguageModel.from_pretrained(str(saved_family("llama")[1]), load_in_4bit=load_in_4bit,
                                                       dtype=torch.float32, device_map="cpu")  # fmt: skip
        model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=gc)
        trainer = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path)), train_dataset=pair_rows(4, seed=5),
                             processing_class=tok)  # fmt: skip
        randomize_adapter(model, seed=1)
        model.train()
        loss = trainer.compute_loss(model, trainer.data_collator(list(trainer.train_dataset)), 4)
        loss.backward()
        results.append((loss.detach(), lora_grads(model)))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=1e-6)
        for k, g in grads.items():
            torch.testing.assert_close(g, results[0][1][k], rtol=1e-5, atol=1e-7, msg=k)


def test_evaluation_logs_eval_metrics(saved_family, tmp_path):
    model, tok = loris_lora(saved_family("llama")[1])
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=3,
                     max_steps=2, logging_steps=1, eval_strategy="steps", eval_steps=2, save_strategy="no",
                     disable_tqdm=True)  # fmt: skip
    trainer = DPOTrainer(model, args=args, train_dataset=pair_rows(4, seed=1), eval_dataset=pair_rows(5, seed=2),
                         processing_class=tok)  # fmt: skip
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 1 and "eval_rewards/margins" in evals[0] and "rewards/margins" not in evals[0]
    assert evals[0]["eval_loss"] == pytest.approx(0.6931, abs=0.05)  # 2 tiny steps: still near -log σ(0)
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all("eval_rewards/margins" not in e for e in train_logs)
