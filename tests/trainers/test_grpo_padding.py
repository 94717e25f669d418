"""GRPO's log-prob forwards are padded to a multiple of 64 tokens (few shapes for the GPU's kernels)
without changing any log-prob, loss or gradient; its rollouts reuse one fixed-shape decode step."""

from __future__ import annotations

import pytest
import torch
from grpo_testing import grpo_args

from loris import FastLanguageModel, GRPOTrainer
from loris.generation import engine
from loris.lora import lora_modules
from loris.trainers import grpo
from loris.trainers.grpo_loss import completion_logps


def _lora_model(saved_family, family="llama"):
    _, folder = saved_family(family)
    model, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
    return model, tok


def _widths(model):
    seen = []
    hook = model.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    return seen, hook


def _grads(model, value):
    params = [p for _, m in lora_modules(model) for p in (m.lora_A, m.lora_B)]
    return torch.autograd.grad(value, params)


@pytest.mark.parametrize("family, padded_to", [("gemma2", 64), ("phi3", 12)])
def test_padded_logps_and_gradients_equal_unpadded(family, padded_to, saved_family):
    """Right padding to 64 tokens; LongRoPE (phi3), whose tables depend on the longest position,
    is left unpadded."""
    model, _ = _lora_model(saved_family, family)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(4, 160, (3, 7), generator=g)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[1, :3] = 0  # a left-padded prompt
    comp = torch.randint(4, 160, (3, 5), generator=g)
    seen, hook = _widths(model)
    try:
        padded = grpo.padded_completion_logps(
            model, prompt, prompt_mask, comp, 0, temperature=0.7, chunk_size=8, multiple=64
        )
    finally:
        hook.remove()
    assert seen == [padded_to]
    ids, mask = torch.cat([prompt, comp], 1), torch.cat([prompt_mask, torch.ones_like(comp)], 1)
    plain = completion_logps(model, ids, mask, 5, temperature=0.7, chunk_size=8)
    weights = torch.randn(3, 5, generator=g)  # a loss that weighs every position differently
    for p, q in zip(padded, plain, strict=True):
        assert p.shape == (3, 5)
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    for a, b in zip(
        _grads(model, (padded[0] * weights).sum()), _grads(model, (plain[0] * weights).sum()), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _data(n=4):
    # prompts of 2 to 5 words: the rollouts' prompt widths change from step to step
    return [{"prompt": " ".join(f"w{5 + i + j}" for j in range(2 + i % 4))} for i in range(n)]


def reward_len(prompts, completions, **_):
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_loss_and_gradients_do_not_depend_on_the_padding(loss_type, saved_family, tmp_path, monkeypatch):
    """The trainer's loss, metrics, gradients and generation-time log-probs (old and reference,
    beta > 0) with padding to 64 tokens equal those without (multiple 1)."""
    model, tok = _lora_model(saved_family)
    args = grpo_args(
        tmp_path, loss_type=loss_type, beta=0.1, num_iterations=2, per_device_train_batch_size=8, seed=3
    )
    trainer = GRPOTrainer(model, reward_len, args, train_dataset=_data(), processing_class=tok)
    torch.manual_seed(0)
    rollout = trainer._generate_and_score([0, 1])
    batch = {**rollout.micro_batch(0), "grad_accum": 1}
    assert (batch["prompt_ids"].shape[1] + batch["completion_ids"].shape[1]) % 64  # padding applies
    results = {}
    for multiple in (64, 1):
        monkeypatch.setattr(grpo, "SEQUENCE_MULTIPLE", multiple)
        trainer._metrics = {}
        loss = trainer.compute_loss(model, batch, None)
        with torch.no_grad():
            old = trainer._logps_batched(rollout.tensors)
        results[multiple] = (loss.detach(), _grads(model, loss), dict(trainer._metrics), old)
    (loss_p, grads_p, metrics_p, old_p), (loss_u, grads_u, metrics_u, old_u) = results[64], results[1]
    torch.testing.assert_close(loss_p, loss_u, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads_p, grads_u, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert metrics_p.keys() == metrics_u.keys() and "kl" in metrics_p
    for k in metrics_p:
        assert metrics_p[k] == pytest.approx(metrics_u[k], abs=1e-5), k
    torch.testing.assert_close(old_p, old_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rollout.tensors["old_logps"], old_u, atol=1e-5, rtol=1e-5)


def test_rollouts_reuse_one_decode_step(saved_family, tmp_path, monkeypatch):
    """Fixed-shape decoding ("static"; "cuda_graph" on a GPU): prompts of a new width every step
    still decode with the step built at the first one, released when training ends."""
    model, tok = _lora_model(saved_family)
    built = []

    class CountingStep(engine.StaticDecodeStep):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(self)

    monkeypatch.setattr(engine, "StaticDecodeStep", CountingStep)
    widths = []
    run = engine.run

    def spy(model, ids, *a, **kw):
        widths.append(ids.shape[1])
        return run(model, ids, *a, **kw)

    monkeypatch.setattr(engine, "run", spy)
    args = grpo_args(tmp_path, max_steps=4, generation_decode="static", per_device_train_batch_size=4)
    trainer = GRPOTrainer(model, reward_len, args, train_dataset=_data(), processing_class=tok)
    kept = []
    monkeypatch.setattr(trainer, "save_reward_plot", lambda: kept.append(engine.decode_steps(model)) or None)
    trainer.train()
    assert len(set(widths)) > 1 and len(widths) == 4
    assert len(built) == 1
    assert kept == [{}]  # released when training ended
