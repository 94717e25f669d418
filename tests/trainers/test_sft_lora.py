"""SFT acceptance at the LoRA level (tiny llama, adapters from `FastLanguageModel.get_peft_model`):
accumulation invariance, exact resume, QLoRA on CPU, response-only training, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from trainer_testing import Record, token_rows

from loris import FastLanguageModel, SFTConfig, SFTTrainer
from loris.chat_templates import get_chat_template, train_on_responses_only

# A chat template whose markers are words of the tiny vocabulary: w10 opens a user turn, w11 an answer.
TINY_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}w10 {{ m['content'] }} "
    "{% else %}w11 {{ m['content'] }} </s> {% endif %}{% endfor %}{% if add_generation_prompt %}w11 {% endif %}"
)


@pytest.fixture
def load_lora(saved_family):
    """Call to get a fresh ``(model, tokenizer)`` with LoRA r=8, alpha=16 (same init every time)."""
    folder = saved_family("llama")[1]

    def load(load_in_4bit: bool = False, gradient_checkpointing: bool | str = False):
        model, tok = FastLanguageModel.from_pretrained(
            str(folder), load_in_4bit=load_in_4bit, dtype=torch.float32, device_map="cpu"
        )
        model = FastLanguageModel.get_peft_model(
            model, r=8, lora_alpha=16, use_gradient_checkpointing=gradient_checkpointing
        )
        return model, tok

    return load


def adapter_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def config(out, **kw) -> SFTConfig:
    base = dict(output_dir=str(out), logging_steps=1, save_strategy="no", disable_tqdm=True)
    return SFTConfig(**{**base, **kw})


def run(load, rows, out, callbacks=(), resume=None, **kw):
    model, tok = load()
    rec = Record()
    trainer = SFTTrainer(model, config(out, **kw), train_dataset=rows, processing_class=tok,
                         callbacks=[rec, *callbacks])  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return rec.steps, adapter_of(model)


def test_lora_adapters_are_what_trains(load_lora):
    model, _ = load_lora()
    names = list(adapter_of(model))
    assert names and all("lora_" in n for n in names)
    assert len(names) == 3 * 7 * 2  # 3 layers x 7 projections x (A, B)


# ---------------------------------------------- batch 1 x accumulation 4 == batch 4 x accumulation 1
def test_accumulation_invariance_on_unequal_lengths(load_lora, tmp_path):
    rows = token_rows([2, 13, 5, 9, 3, 12, 7, 4], seed=5)  # very unequal: mean-of-means would differ
    common = dict(max_steps=2, optim="sgd", learning_rate=2.0, max_grad_norm=0.0, seed=11)
    big, w_big = run(load_lora, rows, tmp_path / "4x1", per_device_train_batch_size=4,
                     gradient_accumulation_steps=1, **common)  # fmt: skip
    small, w_small = run(load_lora, rows, tmp_path / "1x4", per_device_train_batch_size=1,
                         gradient_accumulation_steps=4, **common)  # fmt: skip
    for step in (1, 2):
        assert small[step]["loss"] == pytest.approx(big[step]["loss"], rel=1e-5)
        assert small[step]["grad_norm"] == pytest.approx(big[step]["grad_norm"], rel=1e-4)
    start = adapter_of(load_lora()[0])
    for name, w in w_big.items():
        torch.testing.assert_close(w_small[name], w, rtol=1e-5, atol=1e-6, msg=name)
    moved = [n for n in w_big if not torch.equal(w_big[n], start[n])]
    assert len(moved) == len(w_big)  # step 1 moves every B, step 2 then every A


# ------------------------------------------------------------------------------------------- resume
def test_resume_gives_the_uninterrupted_adapter(load_lora, tmp_path):
    rows = token_rows([6, 3, 9, 5, 8, 4, 7, 2, 10, 5], seed=8)
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=5,
                  optim="adamw_torch", learning_rate=5e-3, warmup_steps=1, lr_scheduler_type="cosine",
                  save_strategy="steps", save_steps=1, seed=2)  # fmt: skip
    full, w_full = run(load_lora, rows, tmp_path / "full", **common)
    with pytest.raises(KeyboardInterrupt):  # crash during step 4, after checkpoint-3
        run(load_lora, rows, tmp_path / "cut", callbacks=[Record(crash_at=4)], **common)
    resumed, w_resumed = run(load_lora, rows, tmp_path / "cut", resume=True, **common)
    assert sorted(resumed) == [4, 5]
    for step in (4, 5):
        assert resumed[step]["loss"] == full[step]["loss"]
    for name, w in w_full.items():
        assert torch.equal(w_resumed[name], w), name


# -------------------------------------------------------------------------------------- QLoRA, CPU
def test_qlora_loss_falls_on_cpu(load_lora, tmp_path):
    from loris.quant import QuantizedLinear

    model, tok = load_lora(load_in_4bit=True)
    assert any(isinstance(m, QuantizedLinear) for m in model.modules())
    rows = [{"text": "w20 w21 w22 w23 w24 w25 w26 w27"}] * 8  # one sentence, over and over
    rec = Record()
    cfg = config(tmp_path, per_device_train_batch_size=4, max_steps=8, learning_rate=1e-2,
                 optim="adamw_torch", seed=0)  # fmt: skip
    SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok, callbacks=[rec]).train()
    losses = [rec.steps[s]["loss"] for s in range(1, 9)]
    # a random tiny model's logits are small (lm_head std 0.02, frozen), so the drop is modest but steady
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(b < a for a, b in zip(losses[:-1], losses[1:], strict=True)), losses  # at every step


# ------------------------------------------------------------------------- train_on_responses_only
def test_train_on_responses_only_then_train(load_lora, tmp_path):
    model, tok = load_lora()
    tok = get_chat_template(tok, chat_template=(TINY_TEMPLATE, "</s>"))
    rows = [
        {"messages": [{"role": "user", "content": f"w{30 + i} w{31 + i}"},
                      {"role": "assistant", "content": f"w{60 + i} w{61 + i} w{62 + i}"}]}
        for i in range(6)
    ]  # fmt: skip
    rec = Record()
    cfg = config(
        tmp_path, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-2, optim="adamw_torch"
    )
    trainer = SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok, callbacks=[rec])
    assert train_on_responses_only(trainer) is trainer  # markers found from the template
    row = trainer.train_dataset[0]
    assert row["input_ids"] == [10, 30, 31, 11, 60, 61, 62, 2]
    assert row["labels"] == [-100, -100, -100, -100, 60, 61, 62, 2]
    out = trainer.train()
    assert out.global_step == 3 and all(rec.steps[s]["loss"] > 0 for s in (1, 2, 3))


# --------------------------------------------------------------------------- gradient checkpointing
def test_gradient_checkpointing_modes_give_the_same_losses(load_lora, tmp_path):
    rows = token_rows([5, 9, 3, 8, 6, 4], seed=9)
    common = dict(per_device_train_batch_size=3, max_steps=3, optim="adamw_torch", learning_rate=1e-2)
    runs = {}
    for mode in (False, True, "offload"):
        runs[mode] = run(lambda mode=mode: load_lora(gradient_checkpointing=mode), rows,
                         tmp_path / str(mode), **common)  # fmt: skip
    losses = {m: [steps[s]["loss"] for s in (1, 2, 3)] for m, (steps, _) in runs.items()}
    assert losses[False][2] != losses[False][0]
    for mode in (True, "offload"):
        assert losses[mode] == pytest.approx(losses[False], rel=1e-6), mode
        for name, w in runs[False][1].items():
            torch.testing.assert_close(runs[mode][1][name], w, rtol=1e-5, atol=1e-6, msg=name)
