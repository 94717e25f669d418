"""GRPO loss pieces against direct, loop-by-loop implementations of TRL 1.15's written formulas."""

from __future__ import annotations

import math

import pytest
import torch

from loris.trainers.grpo_loss import LossSettings, completion_logps, group_advantages, grpo_loss


def _case(seed=0, rows=6, t=7):
    g = torch.Generator().manual_seed(seed)
    logps = (torch.rand(rows, t, generator=g) * -3).requires_grad_()
    old = logps.detach() + torch.randn(rows, t, generator=g) * 0.3  # ratios both sides of the clip
    ref = logps.detach() + torch.randn(rows, t, generator=g) * 0.5
    adv = torch.randn(rows, generator=g)
    lengths = [7, 3, 5, 1, 6, 2][:rows]
    mask = torch.tensor([[1.0 if j < n else 0.0 for j in range(t)] for n in lengths])
    return logps, old, ref, adv, mask


def _reference(logps, old, ref, adv, mask, loss_type, eps_lo, eps_hi, beta, max_len, accum, spg, gen_tokens):
    """Σ over tokens written out, one sequence at a time (TRL's definitions)."""
    rows, t = logps.shape
    per_seq_means, total, count = [], 0.0, 0.0
    for i in range(rows):
        seq_sum, seq_n = 0.0, 0.0
        for j in range(t):
            if mask[i, j] == 0:
                continue
            r = torch.exp(logps[i, j] - old[i, j])
            a = adv[i]
            term = -torch.minimum(r * a, torch.clamp(r, 1 - eps_lo, 1 + eps_hi) * a)
            if beta:
                d = ref[i, j] - logps[i, j]
                term = term + beta * (torch.exp(d) - d - 1)
            seq_sum = seq_sum + term
            seq_n += 1
        per_seq_means.append(seq_sum / max(seq_n, 1.0))
        total = total + seq_sum
        count += seq_n
    if loss_type == "grpo":
        return sum(per_seq_means) / rows / accum
    if loss_type == "bnpo":
        return total / max(count, 1.0) / accum
    if loss_type == "dr_grpo":
        return total / (rows * max_len) / accum
    return total / (gen_tokens * accum / spg)  # dapo


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradients_match_trl_formula(loss_type, beta):
    logps, old, ref, adv, mask = _case()
    s = LossSettings(
        loss_type, 0.2, 0.28, beta, max_completion_length=9, grad_accum=2, steps_per_generation=4
    )
    got, metrics = grpo_loss(logps, old, ref, adv, mask, s, generation_tokens=50.0)
    (g_got,) = torch.autograd.grad(got, logps)
    want = _reference(logps, old, ref, adv, mask, loss_type, 0.2, 0.28, beta, 9, 2, 4, 50.0)
    (g_want,) = torch.autograd.grad(want, logps)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
    assert torch.allclose(g_got, g_want, atol=1e-7, rtol=1e-5)
    assert g_got[mask == 0].abs().max() == 0  # padding gets no gradient
    assert 0 < metrics["clip_ratio/region_mean"] < 1
    assert ("kl" in metrics) == (beta != 0)


def test_on_policy_loss_value_and_gradient():
    """With old = logps (num_iterations 1) the ratio is 1: the dapo loss is -Σ A·M / N and its
    gradient wrt each scored log-prob is -A/N."""
    logps, _, _, adv, mask = _case(1)
    s = LossSettings("dapo", grad_accum=1, steps_per_generation=1)
    n = float(mask.sum())
    loss, _ = grpo_loss(logps, None, None, adv, mask, s, generation_tokens=n)
    assert math.isclose(float(loss.detach()), float(-(adv[:, None] * mask).sum() / n), rel_tol=1e-6)
    (g,) = torch.autograd.grad(loss, logps)
    assert torch.allclose(g, -adv[:, None] * mask / n)


def test_group_advantages_match_trl():
    g = torch.Generator().manual_seed(3)
    per_func = torch.randn(8, 2, generator=g)
    per_func[1, 0] = float("nan")  # one function skipped one completion
    per_func[5] = float("nan")  # every function skipped this one
    w = torch.tensor([1.0, 0.5])
    adv, total, _ = group_advantages(per_func, w, 4, "group")
    for grp in range(2):
        r = [
            None
            if i == 5
            else (0.0 if math.isnan(per_func[i, 0]) else float(per_func[i, 0])) + 0.5 * float(per_func[i, 1])
            for i in range(grp * 4, grp * 4 + 4)
        ]
        vals = [x for x in r if x is not None]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1))
        for k, x in enumerate(r):
            want = 0.0 if x is None else (x - mean) / (std + 1e-4)
            assert math.isclose(float(adv[grp * 4 + k]), want, rel_tol=1e-5, abs_tol=1e-6)
    flat, _, _ = group_advantages(per_func, w, 4, "none")
    assert math.isclose(float(flat[0]), float(total[0] - torch.nanmean(total[:4])), rel_tol=1e-5)
    batch, _, std = group_advantages(per_func, w, 4, "batch")
    vals = total[~torch.isnan(total)]
    assert math.isclose(float(std[0]), float(vals.std()), rel_tol=1e-5)


def test_chunked_logps_equal_full_logits(saved_family):
    from loris import FastLanguageModel

    _, folder = saved_family("gemma2")  # soft-capped logits
    model, _ = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 160, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded prompt
    comp = 5
    lp, ent = completion_logps(model, ids, mask, comp, temperature=0.7, chunk_size=4)
    (grad_chunked,) = torch.autograd.grad(lp.sum(), [model.layers[0].self_attn.q_proj.lora_B])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(ids, attention_mask=mask, position_ids=positions).logits.float() / 0.7
    full = torch.log_softmax(logits[:, -comp - 1 : -1], -1).gather(-1, ids[:, -comp:, None]).squeeze(-1)
    (grad_full,) = torch.autograd.grad(full.sum(), [model.layers[0].self_attn.q_proj.lora_B])
    probs = torch.softmax(logits[:, -comp - 1 : -1], -1)
    full_ent = -(probs * torch.log_softmax(logits[:, -comp - 1 : -1], -1)).sum(-1)
    assert torch.allclose(lp, full, atol=1e-5)
    assert torch.allclose(ent, full_ent, atol=1e-4)
    assert torch.allclose(grad_chunked, grad_full, atol=1e-5, rtol=1e-4)
