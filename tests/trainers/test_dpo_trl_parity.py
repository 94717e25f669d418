"""DPO against TRL 1.15's own `DPOTrainer` as the oracle: the same tiny model (loris' LoRA and
transformers + PEFT with the same weights), the same batch → the same tokenization, loss, logged
rewards/log-probs and adapter gradients, for every loss type loris ships; and the reference is what
TRL's is (the base for a fresh adapter, a frozen copy for a trained one, or a given model)."""

from __future__ import annotations

import pytest
import torch
from preference_testing import (
    TINY_TEMPLATE,
    TorchLogProbs,
    assert_grads_equal,
    chat_pair_rows,
    copy_adapter_to_peft,
    lora_grads,
    loris_lora,
    pair_rows,
    peft_grads,
    peft_twin,
    randomize_adapter,
    trl_args,
    trl_step_metrics,
)

from loris import DPOConfig, DPOTrainer
from loris.trainers.preference_loss import DPO_LOSS_TYPES

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")  # fmt: skip
B = 4


@pytest.fixture(autouse=True)
def trl_on_cpu(monkeypatch):
    monkeypatch.setattr("trl.trainer.utils._ChunkedLogProbFunction", TorchLogProbs)


def build(saved_family, tmp_path, rows, *, trained_before: bool, padding_free: bool = False, **cfg):
    """(loris trainer, TRL trainer) over the same model; the adapter moves after both are built, so
    policy and reference differ (as after some steps of training). ``padding_free`` is loris' alone:
    TRL 1.15 accepts it for DPO but trains padded, so the oracle stays TRL's padded trainer."""
    folder = saved_family("llama")[1]
    model, tok = loris_lora(folder)
    if trained_before:
        randomize_adapter(model, seed=1)
    twin = peft_twin(model, folder, tmp_path / "adapter")
    ours = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path / "l"), per_device_train_batch_size=B,
                                            disable_tqdm=True, padding_free=padding_free, **cfg),
                      train_dataset=rows, processing_class=tok)  # fmt: skip
    theirs = trl.DPOTrainer(twin, args=trl_args(trl.DPOConfig, tmp_path / "t", **cfg),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    randomize_adapter(model, seed=2)
    copy_adapter_to_peft(model, theirs.model)
    return ours, theirs


def one_step(ours, theirs, rows_idx=range(B)):
    model = ours.model
    batch = ours.data_collator([ours.train_dataset[i] for i in rows_idx])
    model.zero_grad()
    loss = ours.compute_loss(model, batch, len(rows_idx))
    loss.backward()
    mine = ours.latest_metrics()

    tbatch = theirs.data_collator([theirs.train_dataset[i] for i in rows_idx])
    theirs.model.zero_grad()
    tloss = theirs.compute_loss(theirs.model, tbatch)
    tloss.backward()
    return batch, tbatch, loss, tloss, mine, trl_step_metrics(theirs)


def check(ours, theirs):
    batch, tbatch, loss, tloss, mine, their_metrics = one_step(ours, theirs)
    assert torch.equal(batch["input_ids"], tbatch["input_ids"])  # same tokenization and layout
    assert torch.equal(batch["completion_mask"], tbatch["completion_mask"])
    torch.testing.assert_close(loss, tloss, rtol=1e-5, atol=1e-6)
    for k in METRICS:
        assert mine[k] == pytest.approx(their_metrics[k], rel=1e-4, abs=1e-6), k
    assert_grads_equal(lora_grads(ours.model), peft_grads(theirs.model))
    return mine


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_matches_trl(saved_family, tmp_path, loss_type, padding_free):
    ours, theirs = build(saved_family, tmp_path, pair_rows(B, seed=3), trained_before=False,
                         padding_free=padding_free, loss_type=loss_type, beta=0.2)  # fmt: skip
    assert ours.reference.kind == "base"  # fresh adapter: the base model is the reference
    mine = check(ours, theirs)
    assert abs(mine["rewards/margins"]) > 1e-4  # policy and reference differ: the rewards are real


def test_every_other_dpo_loss_type_matches_trl(saved_family, tmp_path):
    ours, theirs = build(saved_family, tmp_path, pair_rows(B, seed=4), trained_before=False, beta=0.3,
                         label_smoothing=0.1)  # fmt: skip
    for loss_type in [t for t in DPO_LOSS_TYPES if t not in ("sigmoid", "ipo", "hinge")]:
        ours.args.loss_type, ours.args.loss_weights = [loss_type], [1.0]
        theirs.loss_types, theirs.loss_weights = [loss_type], [1.0]
        check(ours, theirs)


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
def test_combined_losses_and_f_divergence_match_trl(saved_family, tmp_path, padding_free):
    cfg = dict(loss_type=["sigmoid", "sft"], loss_weights=[0.8, 0.2], f_divergence_type="js_divergence")
    ours, theirs = build(saved_family, tmp_path, pair_rows(B, seed=5), trained_before=False,
                         padding_free=padding_free, **cfg)  # fmt: skip
    check(ours, theirs)


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
def test_continuing_from_a_trained_adapter_uses_it_as_the_reference(saved_family, tmp_path, padding_free):
    ours, theirs = build(saved_family, tmp_path, pair_rows(B, seed=6), trained_before=True,
                         padding_free=padding_free)  # fmt: skip
    assert ours.reference.kind == "frozen_adapter"
    assert "ref" in theirs.model.peft_config  # TRL copied the starting adapter as "ref"
    check(ours, theirs)
    # the reference is the starting adapter, not the base: with the adapter off the log-probs differ
    from loris.lora import adapters_disabled

    batch = ours.data_collator([ours.train_dataset[i] for i in range(B)])
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    ref = ours.reference.token_logps(*args)
    with adapters_disabled(ours.model), torch.no_grad():
        from loris.trainers.preference_ref import scored_token_logps

        base = scored_token_logps(ours.model, *args)
    assert not torch.allclose(ref, base, atol=1e-4)


def test_conversational_rows_tokenize_as_trl(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    model, tok = loris_lora(folder)
    tok.chat_template = TINY_TEMPLATE
    rows = chat_pair_rows(6, seed=7)
    ours = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path / "l")), train_dataset=rows,
                      processing_class=tok)  # fmt: skip
    theirs = trl.DPOTrainer(peft_twin(model, folder, tmp_path / "a"), args=trl_args(trl.DPOConfig, tmp_path / "t"),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    for i in range(len(rows)):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert ours.train_dataset[i][key] == theirs.train_dataset[i][key], (i, key)
    assert ours.train_dataset[0]["prompt_ids"][0] == 10  # the template was applied


def test_separately_loaded_reference_model(saved_family, tmp_path):
    """ref_model = another model (loris' or transformers'): its log-probs are the reference, and the
    whole step matches TRL given the same reference."""
    from transformers import AutoModelForCausalLM

    from loris import FastLanguageModel

    folder = saved_family("llama")[1]
    other = saved_family("llama3.2")[1]  # different weights (and tied embeddings)
    model, tok = loris_lora(folder)
    ref_loris, _ = FastLanguageModel.from_pretrained(str(other), load_in_4bit=False, dtype=torch.float32,
                                                     device_map="cpu", full_finetuning=True)  # fmt: skip
    ref_hf = AutoModelForCausalLM.from_pretrained(str(other), dtype=torch.float32)
    rows = pair_rows(B, seed=8)
    twin = peft_twin(model, folder, tmp_path / "a")
    theirs = trl.DPOTrainer(twin, ref_model=ref_hf, args=trl_args(trl.DPOConfig, tmp_path / "t"),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    randomize_adapter(model, seed=2)
    copy_adapter_to_peft(model, theirs.model)
    for ref in (ref_loris, ref_hf):
        ours = DPOTrainer(model, ref_model=ref, args=DPOConfig(output_dir=str(tmp_path / "l")),
                          train_dataset=rows, processing_class=tok)  # fmt: skip
        batch = ours.data_collator([ours.train_dataset[i] for i in range(B)])
        got = ours.reference_logps(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        with torch.no_grad():  # the reference model's own log-probs, from its full logits
            logits = ref_hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
            want = (lp * batch["completion_mask"][:, 1:]).sum(-1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        check(ours, theirs)


def test_precomputed_reference_log_probs_equal_the_live_ones(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    rows = pair_rows(6, seed=9)
    model, tok = loris_lora(folder)
    live = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path / "a")), train_dataset=rows,
                      processing_class=tok)  # fmt: skip
    pre = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path / "b"), precompute_ref_log_probs=True,
                                           precompute_ref_batch_size=4),
                     train_dataset=rows, processing_class=tok)  # fmt: skip
    randomize_adapter(model, seed=3)
    batch = live.data_collator([live.train_dataset[i] for i in range(3)])
    pbatch = pre.data_collator([pre.train_dataset[i] for i in range(3)])
    assert "ref_chosen_logps" in pbatch and "ref_chosen_logps" not in batch
    a = live.compute_loss(model, batch, 3)
    b = pre.compute_loss(model, pbatch, 3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
