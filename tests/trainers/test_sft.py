"""SFT data preparation, the padding collator, packing and SFTTrainer's TRL/Unsloth keywords."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trainer_testing import Record, token_rows

from loris import SFTConfig, SFTTrainer
from loris.data.sft import SFTCollator, pack_dataset
from loris.trainers import TrainingConfig
from loris.trainers.sft import prepare_sft_data

CHAT = "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}"


def prep(rows, tok, formatting_func=None, **cfg):
    return prepare_sft_data(rows, tok, SFTConfig(**cfg), formatting_func)


def ids_of(data) -> list[list[int]]:
    return [list(r["input_ids"]) for r in data]


# ------------------------------------------------------------------------------------ (e) dataset prep
def test_text_field_is_tokenized_with_one_eos(tokenizer):
    rows = [{"text": "w5 w6", "other": 1}, {"text": "w7 </s>", "other": 2}]
    out = prep(rows, tokenizer, max_length=16)
    assert out == [
        {"input_ids": [5, 6, 2], "attention_mask": [1, 1, 1]},
        {"input_ids": [7, 2], "attention_mask": [1, 1]},  # already ended with EOS: not doubled
    ]
    from_dataset = prep(Dataset.from_list(rows), tokenizer, max_length=16)
    assert from_dataset.column_names == ["input_ids", "attention_mask"]
    assert ids_of(from_dataset) == ids_of(out)


def test_other_text_field_and_truncation(tokenizer):
    rows = [{"body": "w4 w5 w6 w7 w8"}, {"body": "w9"}]
    assert ids_of(prep(rows, tokenizer, dataset_text_field="body", max_length=3)) == [[4, 5, 6], [9, 2]]


def test_formatting_func_per_row_and_old_batched_style(tokenizer):
    rows = [{"q": "w10", "a": "w11 w12"}, {"q": "w13", "a": "w14"}]

    def per_row(row):
        return f"{row['q']} {row['a']}"

    def batched(batch):  # TRL's old contract: a batch of columns in, a list of strings out
        return [f"{q} {a}" for q, a in zip(batch["q"], batch["a"], strict=True)]

    want = [[10, 11, 12, 2], [13, 14, 2]]
    assert ids_of(prep(rows, tokenizer, per_row, max_length=8)) == want
    assert ids_of(prep(rows, tokenizer, batched, max_length=8)) == want
    assert ids_of(prep(Dataset.from_list(rows), tokenizer, per_row, max_length=8)) == want


def test_conversational_rows_use_the_chat_template(tokenizer):
    from tokenizers.processors import TemplateProcessing

    tokenizer.chat_template = CHAT
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tokenizer("w5")["input_ids"] == [1, 5]  # this tokenizer adds BOS ...
    chat = [{"role": "user", "content": "w20 w21"}, {"role": "assistant", "content": "w22"}]
    want = [[1, 20, 21, 2, 1, 22, 2]]  # ... but the render starts with BOS, so no second one
    assert ids_of(prep([{"messages": chat}], tokenizer)) == want
    assert ids_of(prep([{"conversations": chat}], tokenizer)) == want
    assert ids_of(prep([{"text": chat}], tokenizer)) == want  # the text field may hold messages too
    assert ids_of(prep([{"text": "w5"}], tokenizer)) == [[1, 5, 2]]  # plain text does get BOS


def test_conversational_errors_point_to_the_fix(tokenizer):
    with pytest.raises(ValueError, match="get_chat_template"):
        prep([{"messages": [{"role": "user", "content": "w5"}]}], tokenizer)
    tokenizer.chat_template = CHAT
    with pytest.raises(ValueError, match="standardize_sharegpt"):
        prep([{"conversations": [{"from": "human", "value": "w5"}]}], tokenizer)


def test_tokenized_rows_pass_through_and_keep_labels(tokenizer):
    rows = [{"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1], "labels": [-100, -100, 7, 8]}]
    assert prep(rows, tokenizer, max_length=8) == rows
    assert prep(rows, tokenizer, max_length=3) == [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, -100, 7]}
    ]
    skipped = [{"text": "w5", "n": 1}]
    assert prep(skipped, tokenizer, dataset_kwargs={"skip_prepare_dataset": True}) is skipped


def test_prompt_completion_masks_the_prompt(tokenizer):
    rows = [{"prompt": "w30 w31", "completion": "w32"}]
    assert prep(rows, tokenizer, max_length=8) == [
        {"input_ids": [30, 31, 32, 2], "attention_mask": [1] * 4, "labels": [-100, -100, 32, 2]}
    ]
    assert prep(rows, tokenizer, max_length=8, completion_only_loss=False)[0]["labels"] == [30, 31, 32, 2]


def test_missing_text_column_names_the_columns(tokenizer):
    rows = [{"question": "w5", "answer": "w6"}]
    with pytest.raises(
        ValueError, match=r"no 'text' column .*columns: \['question', 'answer'\].*dataset_text_field"
    ):
        prep(rows, tokenizer)
    with pytest.raises(ValueError, match=r"columns: \['question', 'answer'\]"):
        prep(Dataset.from_list(rows), tokenizer)


# ---------------------------------------------------------------------------------- (f) the collator
def test_collator_masks_padding_by_attention_mask_not_pad_id(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token  # the common pad == EOS setup
    rows = prep([{"text": "w5 w6"}, {"text": "w7"}], tokenizer, max_length=8)
    trainer_collator = SFTTrainer(
        torch.nn.Linear(1, 1), SFTConfig(), processing_class=tokenizer
    ).data_collator
    assert trainer_collator.pad_token_id == 2
    batch = trainer_collator(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 2], [7, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 2], [7, 2, -100]]  # the real EOS of row 2 is trained on


def test_collator_pads_given_labels_and_positions():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 0]},
        {"input_ids": [8], "labels": [8], "position_ids": [0]},
    ]
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_user_collator_is_called_on_model_columns(tokenizer):
    from transformers import DataCollatorForSeq2Seq

    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "text": "w5 w6 w7"},
            {"input_ids": [8], "attention_mask": [1], "labels": [8], "text": "w8"}]  # fmt: skip
    trainer = SFTTrainer(
        torch.nn.Linear(1, 1),
        SFTConfig(dataset_kwargs={"skip_prepare_dataset": True}),
        data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer),
        processing_class=tokenizer,
        train_dataset=rows,
    )
    batch = trainer.data_collator(rows)
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


# ------------------------------------------------------------------------------------------ (h) packing
def test_packing_restarts_positions_and_masks_boundaries():
    rows = [
        {"input_ids": [10, 11, 12], "attention_mask": [1, 1, 1]},
        {"input_ids": [20, 21, 22, 23], "attention_mask": [1, 1, 1, 1], "labels": [-100, -100, 22, 23]},
        {"input_ids": [30, 31, 32, 33, 34], "attention_mask": [1] * 5},
        {"input_ids": [40, 41, 0], "attention_mask": [1, 1, 0]},  # a padded row: the pad is dropped
    ]
    rows[0]["labels"] = rows[2]["labels"] = rows[3]["labels"] = None
    packed = pack_dataset(rows, max_length=8)
    assert [r["input_ids"] for r in packed] == [[10, 11, 12, 20, 21, 22, 23], [30, 31, 32, 33, 34, 40, 41]]
    assert [r["position_ids"] for r in packed] == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1]]
    assert [r["labels"] for r in packed] == [
        [-100, 11, 12, -100, -100, 22, 23],  # no example predicts the first token of the next one
        [-100, 31, 32, 33, 34, -100, 41],
    ]
    assert pack_dataset(Dataset.from_list([{"input_ids": [5, 6]}] * 3), 4).to_list() == [
        {"input_ids": [5, 6, 5, 6], "attention_mask": [1] * 4, "labels": [-100, 6, -100, 6], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6], "position_ids": [0, 1]},
    ]  # fmt: skip


class Spy(SFTTrainer):
    seen: list[dict] = []

    def compute_loss(self, model, batch, num_items_in_batch):
        Spy.seen.append({k: v.clone() for k, v in batch.items()})
        return super().compute_loss(model, batch, num_items_in_batch)


def test_packed_training_passes_position_ids_to_the_model(load_tiny, tmp_path):
    model, tok = load_tiny()
    rows = [{"text": " ".join(f"w{4 + i + j}" for j in range(n))} for i, n in enumerate([3, 2, 4, 1, 3])]
    cfg = SFTConfig(output_dir=str(tmp_path), packing=True, max_length=8, per_device_train_batch_size=2,
                    max_steps=1, save_strategy="no", seed=0)  # fmt: skip
    Spy.seen = []
    trainer = Spy(model, cfg, train_dataset=rows, processing_class=tok)
    assert len(trainer.train_dataset) == 3  # lengths with EOS 4,3,5,2,4 -> rows 4+3, 5+2, 4 (whole examples)
    trainer.train()
    batch = Spy.seen[0]
    assert "position_ids" in batch
    for pos, mask in zip(batch["position_ids"], batch["attention_mask"], strict=True):
        restarts = (pos[mask.bool()] == 0).sum().item()
        assert restarts >= 1 and pos[0] == 0


# ------------------------------------------------------------------------- SFTTrainer's keywords
def test_old_trl_keywords_move_into_the_config(tokenizer):
    args = SFTConfig(per_device_train_batch_size=2)
    trainer = SFTTrainer(
        model=torch.nn.Linear(1, 1),
        tokenizer=tokenizer,
        train_dataset=[{"body": "w5 w6 w7 w8 w9"}],
        dataset_text_field="body",
        max_seq_length=4,
        packing=False,
        dataset_num_proc=None,
        args=args,
    )
    assert trainer.args.dataset_text_field == "body" and trainer.args.max_length == 4
    assert trainer.args.per_device_train_batch_size == 2
    assert args.dataset_text_field == "text" and args.max_length is None  # the caller's config is untouched
    assert trainer.train_dataset == [{"input_ids": [5, 6, 7, 8], "attention_mask": [1] * 4}]
    assert trainer.tokenizer is tokenizer is trainer.processing_class
    with pytest.raises(TypeError, match="unexpected arguments \\['max_sequence_length'\\]"):
        SFTTrainer(torch.nn.Linear(1, 1), processing_class=tokenizer, max_sequence_length=4)
    base = SFTTrainer(torch.nn.Linear(1, 1), TrainingConfig(learning_rate=1e-3), processing_class=tokenizer)
    assert isinstance(base.args, SFTConfig) and base.args.learning_rate == 1e-3


def test_train_on_responses_only_after_construction_is_used(load_tiny, tmp_path):
    from loris.chat_templates import train_on_responses_only

    model, tok = load_tiny()
    rows = [{"text": "w10 w40 w41 w11 w50 w51"}, {"text": "w10 w42 w11 w52 w53 w54"}]
    cfg = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, save_strategy="no")
    trainer = SFTTrainer(model, cfg, train_dataset=rows, processing_class=tok, callbacks=[rec := Record()])
    train_on_responses_only(trainer, instruction_part="w10", response_part="w11")
    assert trainer.train_dataset[0]["labels"] == [-100, -100, -100, -100, 50, 51, 2]
    Spy.seen = []
    trainer.__class__ = Spy  # watch what reaches the model
    trainer.train()
    assert (Spy.seen[0]["labels"] != -100).sum().item() == 3 + 4
    assert rec.steps[1]["loss"] > 0


def test_rows_token_helper_is_deterministic():
    assert token_rows([3, 2], seed=1) == token_rows([3, 2], seed=1)
