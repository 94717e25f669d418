"""``padding_free=True`` in the preference trainers: each micro-batch's sequences (chosen and rejected,
or KTO's completions and KL pairs) run as one row of real tokens, position ids restarting per
sequence. The model must really see fewer tokens (the row is exactly the sum of the real lengths),
and the loss, the logged metrics and the adapter gradients must equal the padded path's. TRL 1.15
accepts ``padding_free`` for DPO but trains padded, so the TRL oracle for this path is TRL's padded
trainer: see the ``padding_free`` cases in test_dpo_trl_parity.py and test_orpo_cpo_kto_trl_parity.py."""

from __future__ import annotations

import pytest
import torch
from preference_testing import loris_lora, pair_rows, randomize_adapter, unpaired_rows

from loris import CPOConfig, CPOTrainer, DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, ORPOConfig, ORPOTrainer
from loris.data.preference import flatten_rows
from loris.trainers.preference_ref import scored_token_logps

B = 4
CASES = {
    "dpo-sigmoid": (DPOTrainer, DPOConfig, dict(loss_type="sigmoid")),
    "dpo-sigmoid+sft": (DPOTrainer, DPOConfig, dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])),
    "dpo-ipo": (DPOTrainer, DPOConfig, dict(loss_type="ipo")),
    "dpo-precomputed": (DPOTrainer, DPOConfig, dict(precompute_ref_log_probs=True)),
    "orpo": (ORPOTrainer, ORPOConfig, {}),
    "simpo": (CPOTrainer, CPOConfig, dict(loss_type="simpo", cpo_alpha=0.0)),
    "cpo": (CPOTrainer, CPOConfig, dict(loss_type="sigmoid")),
    "kto": (KTOTrainer, KTOConfig, dict(loss_type="kto")),
}


def test_flatten_rows_keeps_real_tokens_in_order_with_restarting_positions():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [0, 3, 4, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]])
    flat, pos = flatten_rows(ids, mask)
    assert flat.tolist() == [[5, 6, 7, 8, 9, 3, 4, 2]]
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]


class TokenCounter:
    """Records the (batch, length) of every token batch the model embeds."""

    def __init__(self, model):
        self.shapes: list[tuple[int, ...]] = []
        self.handle = model.embed_tokens.register_forward_pre_hook(
            lambda _m, args: self.shapes.append(tuple(args[0].shape))
        )


def step(trainer, model, idx):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in idx])
    model.zero_grad()
    trainer._metrics = {}
    counter = TokenCounter(model)
    loss = trainer.compute_loss(model, batch, len(idx))
    loss.backward()
    counter.handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return batch, loss.detach(), trainer.latest_metrics(), grads, counter.shapes


@pytest.mark.parametrize("name", list(CASES))
def test_padding_free_equals_padded_and_runs_only_real_tokens(saved_family, tmp_path, name):
    trainer_cls, config_cls, cfg = CASES[name]
    model, tok = loris_lora(saved_family("llama")[1])
    rows = unpaired_rows(2 * B, seed=21) if trainer_cls is KTOTrainer else pair_rows(B, seed=21)
    trainers = {
        free: trainer_cls(
            model,
            args=config_cls(
                output_dir=str(tmp_path / str(free)), per_device_train_batch_size=B, padding_free=free, **cfg
            ),
            train_dataset=rows,
            processing_class=tok,
        )  # fmt: skip
        for free in (False, True)
    }
    randomize_adapter(model, seed=2)  # the policy differs from the reference: rewards are not zero
    padded = step(trainers[False], model, range(B))
    packed = step(trainers[True], model, range(B))

    batch = padded[0]
    rows_, width = batch["input_ids"].shape
    real = int(batch["attention_mask"].sum())
    assert real < rows_ * width  # the batch has padding to save
    n_kl = int(batch["KL_attention_mask"].sum()) if "KL_attention_mask" in batch else None
    kl_shape = {tuple(batch["KL_input_ids"].shape)} if n_kl is not None else set()
    assert set(padded[4]) == {(rows_, width)} | kl_shape
    # every forward (policy, live reference, KTO's KL rows) ran one row of exactly the real tokens
    assert packed[4] and all(s[0] == 1 for s in packed[4])
    assert {s[1] for s in packed[4]} == ({real} if n_kl is None else {real, n_kl})
    assert len(packed[4]) == len(padded[4])

    torch.testing.assert_close(packed[1], padded[1], rtol=1e-5, atol=1e-6)
    assert packed[2].keys() == padded[2].keys()
    for k, v in padded[2].items():
        assert packed[2][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert any(abs(v) > 1e-4 for k, v in padded[2].items() if k.startswith("rewards/"))
    for k, g in padded[3].items():
        torch.testing.assert_close(packed[3][k], g, rtol=1e-4, atol=1e-6, msg=k)
    assert sum(int(g.abs().sum() > 0) for g in padded[3].values()) == len(padded[3])


def test_padding_free_reference_log_probs_equal_padded(saved_family, tmp_path):
    """The reference pass (adapters off) and precomputed reference columns, packed vs padded."""
    model, tok = loris_lora(saved_family("llama")[1])
    rows = pair_rows(6, seed=22)
    made = {
        free: DPOTrainer(
            model,
            args=DPOConfig(
                output_dir=str(tmp_path / str(free)),
                padding_free=free,
                precompute_ref_log_probs=True,
                precompute_ref_batch_size=3,
            ),
            train_dataset=rows,
            processing_class=tok,
        )  # fmt: skip
        for free in (False, True)
    }
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        a = torch.tensor([r[key] for r in made[False].train_dataset])
        b = torch.tensor([r[key] for r in made[True].train_dataset])
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_padding_free_on_the_generic_path(tmp_path):
    """A transformers-backed model (loris' generic path) reads the restarting position ids as
    boundaries too: packed per-token log-probs equal padded ones."""
    from tiny_models import make_generic_model, save_tiny

    folder = tmp_path / "olmo2"
    save_tiny(make_generic_model("olmo2"), folder)
    model, tok = loris_lora(folder)
    randomize_adapter(model, seed=4)
    trainer = DPOTrainer(model, args=DPOConfig(output_dir=str(tmp_path / "o")), train_dataset=pair_rows(B, seed=23),
                         processing_class=tok)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(B)])
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        padded = scored_token_logps(model, *args)
        packed = scored_token_logps(model, *args, padding_free=True)
    assert padded.abs().sum() > 0
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
