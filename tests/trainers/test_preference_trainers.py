"""ORPO, SimPO (CPO) and KTO train on the shared loop: TRL's metric names in log.jsonl, a falling loss."""

from __future__ import annotations

import json

import pytest
from preference_testing import loris_lora, pair_rows, unpaired_rows

from loris import CPOConfig, CPOTrainer, KTOConfig, KTOTrainer, ORPOConfig, ORPOTrainer

CASES = {
    "orpo": (ORPOTrainer, ORPOConfig, {}, ("nll_loss", "log_odds_ratio", "rewards/margins")),
    "simpo": (CPOTrainer, CPOConfig, dict(loss_type="simpo", cpo_alpha=0.0), ("rewards/accuracies",)),
    "kto": (KTOTrainer, KTOConfig, dict(precompute_ref_log_probs=True), ("kl", "rewards/chosen")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_trains_and_logs(saved_family, tmp_path, name):
    trainer_cls, config_cls, extra, keys = CASES[name]
    model, tok = loris_lora(saved_family("llama")[1])
    rows = unpaired_rows(8, seed=1) if name == "kto" else pair_rows(8, seed=1)
    args = config_cls(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6, logging_steps=1,
                      save_strategy="no", disable_tqdm=True, optim="sgd", learning_rate=0.5,
                      lr_scheduler_type="constant", **extra)  # fmt: skip
    trainer = trainer_cls(model, args=args, train_dataset=rows, processing_class=tok)
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 7))
    assert all(k in log[-1] for k in keys + ("logps/chosen",))
    first = sum(e["loss"] for e in log[:2])
    last = sum(e["loss"] for e in log[-2:])
    assert last < first  # the same 8 rows again and again: the loss must fall
