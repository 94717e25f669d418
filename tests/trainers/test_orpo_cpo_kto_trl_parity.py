"""ORPO, CPO/SimPO and KTO against TRL 1.15's own trainers as the oracle: the same tiny model (loris'
LoRA and transformers + PEFT with the same weights), the same batch → the same loss, logged metrics
and adapter gradients. ORPO and CPO (``trl.experimental``) tokenize in their older way, so their
oracle gets loris' batch in its own layout and runs its ``get_batch_loss_metrics``; KTO goes
through TRL's ``compute_loss`` on its own tokenization, which is compared too."""

from __future__ import annotations

import pytest
import torch
from preference_testing import (
    TorchLogProbs,
    assert_grads_equal,
    copy_adapter_to_peft,
    lora_grads,
    loris_lora,
    pair_rows,
    peft_grads,
    peft_twin,
    randomize_adapter,
    trl_args,
    trl_step_metrics,
    unpaired_rows,
)

from loris import CPOConfig, CPOTrainer, KTOConfig, KTOTrainer, ORPOConfig, ORPOTrainer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
B = 4
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "nll_loss")  # fmt: skip


@pytest.fixture(autouse=True)
def trl_on_cpu(monkeypatch):
    monkeypatch.setattr("trl.trainer.utils._ChunkedLogProbFunction", TorchLogProbs)


def twins(saved_family, tmp_path, trained_before: bool = False):
    folder = saved_family("llama")[1]
    model, tok = loris_lora(folder)
    if trained_before:
        randomize_adapter(model, seed=1)
    return folder, model, tok, peft_twin(model, folder, tmp_path / "adapter")


def trl_pair_batch(batch: dict) -> dict:
    """loris' [chosen; rejected] batch in the layout of TRL's legacy ORPO/CPO collator."""
    half = batch["input_ids"].shape[0] // 2
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    out = {}
    for name, sl in (("chosen", slice(None, half)), ("rejected", slice(half, None))):
        out[f"{name}_input_ids"] = batch["input_ids"][sl]
        out[f"{name}_attention_mask"] = batch["attention_mask"][sl]
        out[f"{name}_labels"] = labels[sl]
    return out


def pair_check(ours, theirs, names=PAIR_METRICS):
    batch = ours.data_collator([ours.train_dataset[i] for i in range(B)])
    ours.model.zero_grad()
    loss = ours.compute_loss(ours.model, batch, B)
    loss.backward()
    mine = ours.latest_metrics()
    theirs.model.zero_grad()
    tloss, their_metrics = theirs.get_batch_loss_metrics(theirs.model, trl_pair_batch(batch))
    tloss.backward()
    torch.testing.assert_close(loss, tloss, rtol=1e-5, atol=1e-6)
    for k in names:
        assert mine[k] == pytest.approx(their_metrics[k], rel=1e-4, abs=1e-6), k
    assert_grads_equal(lora_grads(ours.model), peft_grads(theirs.model))
    return mine


PADDING = pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])


@PADDING
def test_orpo_matches_trl(saved_family, tmp_path, padding_free):
    """``padding_free`` (loris' packed rows) is checked against TRL's padded trainer: the same numbers."""
    from trl.experimental.orpo import ORPOConfig as TrlORPOConfig
    from trl.experimental.orpo import ORPOTrainer as TrlORPOTrainer

    folder, model, tok, twin = twins(saved_family, tmp_path, trained_before=True)
    rows = pair_rows(B, seed=11)
    ours = ORPOTrainer(model, args=ORPOConfig(output_dir=str(tmp_path / "l"), beta=0.2, padding_free=padding_free),
                       train_dataset=rows, processing_class=tok)  # fmt: skip
    theirs = TrlORPOTrainer(twin, args=trl_args(TrlORPOConfig, tmp_path / "t", beta=0.2),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    mine = pair_check(ours, theirs, PAIR_METRICS + ("log_odds_ratio", "log_odds_chosen"))
    assert mine["nll_loss"] > 0 and mine["log_odds_chosen"] != 0


@pytest.mark.parametrize(
    "cfg",
    [
        dict(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.7),  # SimPO as TRL configures it
        dict(loss_type="sigmoid"),  # CPO with its NLL term
        dict(loss_type="hinge", cpo_alpha=0.5),
        dict(loss_type="ipo"),
        dict(loss_type="sigmoid", alpha=0.3, label_smoothing=0.1),  # AlphaPO
    ],
    ids=lambda c: c["loss_type"] + ("-alpha" if c.get("alpha") else ""),
)
@PADDING
def test_cpo_and_simpo_match_trl(saved_family, tmp_path, cfg, padding_free):
    from trl.experimental.cpo import CPOConfig as TrlCPOConfig
    from trl.experimental.cpo import CPOTrainer as TrlCPOTrainer

    folder, model, tok, twin = twins(saved_family, tmp_path, trained_before=True)
    rows = pair_rows(B, seed=12)
    ours = CPOTrainer(model, args=CPOConfig(output_dir=str(tmp_path / "l"), beta=0.3, padding_free=padding_free, **cfg),
                      train_dataset=rows, processing_class=tok)  # fmt: skip
    theirs = TrlCPOTrainer(twin, args=trl_args(TrlCPOConfig, tmp_path / "t", beta=0.3, **cfg),
                           train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    pair_check(ours, theirs)


KTO_METRICS = (
    "kl",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@PADDING
@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_matches_trl(saved_family, tmp_path, loss_type, padding_free):
    folder, model, tok, twin = twins(saved_family, tmp_path)
    rows = unpaired_rows(2 * B, seed=13)
    cfg = dict(beta=0.2, desirable_weight=1.3, undesirable_weight=0.7, loss_type=loss_type)
    ours = KTOTrainer(model, args=KTOConfig(output_dir=str(tmp_path / "l"), per_device_train_batch_size=B,
                                            padding_free=padding_free, **cfg),
                      train_dataset=rows, processing_class=tok)  # fmt: skip
    theirs = trl.KTOTrainer(twin, args=trl_args(trl.KTOConfig, tmp_path / "t", **cfg),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    assert ours.reference.kind == "base"
    randomize_adapter(model, seed=2)  # policy moves away from the (base) reference
    copy_adapter_to_peft(model, theirs.model)
    keys = ["prompt_ids", "completion_ids"] + (["KL_completion_ids"] if loss_type == "kto" else [])
    for i in range(len(rows)):
        for key in keys:
            assert ours.train_dataset[i][key] == theirs.train_dataset[i][key], (i, key)
    for start in (0, B):  # two micro-batches: their labels are mixed differently
        idx = range(start, start + B)
        batch = ours.data_collator([ours.train_dataset[i] for i in idx])
        model.zero_grad()
        loss = ours.compute_loss(model, batch, B)
        loss.backward()
        mine = ours.latest_metrics()
        tbatch = theirs.data_collator([theirs.train_dataset[i] for i in idx])
        theirs.model.zero_grad()
        tloss = theirs.compute_loss(theirs.model, tbatch)
        tloss.backward()
        torch.testing.assert_close(loss, tloss, rtol=1e-5, atol=1e-6)
        their_metrics = trl_step_metrics(theirs)
        for k in KTO_METRICS:
            assert mine[k] == pytest.approx(their_metrics[k], rel=1e-4, abs=1e-6), k
        assert_grads_equal(lora_grads(model), peft_grads(theirs.model))
    if loss_type == "kto":
        assert mine["kl"] > 0


def test_kto_precomputed_reference_equals_live(saved_family, tmp_path):
    folder = saved_family("llama")[1]
    model, tok = loris_lora(folder)
    rows = unpaired_rows(8, seed=14)
    live = KTOTrainer(model, args=KTOConfig(output_dir=str(tmp_path / "a"), per_device_train_batch_size=4),
                      train_dataset=rows, processing_class=tok)  # fmt: skip
    pre = KTOTrainer(model, args=KTOConfig(output_dir=str(tmp_path / "b"), per_device_train_batch_size=4,
                                           precompute_ref_log_probs=True),
                     train_dataset=rows, processing_class=tok)  # fmt: skip
    randomize_adapter(model, seed=5)
    rows_a = [live.train_dataset[i] for i in range(4)]
    rows_b = [pre.train_dataset[i] for i in range(4)]
    assert "ref_KL_logps" in rows_b[0]
    a = live.compute_loss(model, live.data_collator(rows_a), 4)
    b = pre.compute_loss(model, pre.data_collator(rows_b), 4)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kto_missing_label_is_named(saved_family, tmp_path):
    model, tok = loris_lora(saved_family("llama")[1])
    with pytest.raises(ValueError, match=r"\['label'\]"):
        KTOTrainer(model, args=KTOConfig(output_dir=str(tmp_path)), processing_class=tok,
                   train_dataset=[{"prompt": "w4", "completion": " w5"}])  # fmt: skip
