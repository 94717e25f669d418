"""The preference losses on sequence log-probs, written from TRL 1.15's formulas (the tests hold them
to TRL's own trainers): DPO and its variants, CPO/SimPO, ORPO and KTO.

Every function returns per-example losses (callers sum them and divide by the examples in the
optimizer step, which is TRL's per-micro-batch mean when micro-batches are equal) and detached
rewards for logging. Inputs are fp32 tensors of shape (pairs,) unless said otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "sigmoid_norm",
    "sft",
)
CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo")
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass
class PairLogps:
    """Summed completion log-probs of a batch of pairs, with what some losses also need."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # completion tokens per chosen sequence (float)
    rejected_tokens: torch.Tensor


def _scores(logratio: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """f'(π/π_ref) for the f-divergence regularisers of f-DPO (reverse KL is the log-ratio itself)."""
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(alpha - 1.0) < 1e-6):
        return logratio
    if kind == "forward_kl":
        return 1 - torch.exp(-logratio)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratio)
    if kind == "alpha_divergence":
        t = torch.clamp((alpha - 1.0) * logratio.float(), max=80.0)
        return (torch.exp(t) - 1.0).to(logratio.dtype) / (alpha - 1.0)
    raise ValueError(f"f_divergence_type={kind!r}: choose one of {list(F_DIVERGENCES)}.")


def dpo_losses(
    policy: PairLogps,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    sft_token_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss of one DPO ``loss_type`` (TRL's ``DPOTrainer._compute_loss``).

    ``sft_token_logps``: the chosen completions' per-token log-probs, flattened (loss_type "sft",
    whose value is their mean, repeated for every pair)."""
    chosen_lr = policy.chosen - ref_chosen
    rejected_lr = policy.rejected - ref_rejected
    chosen_s = _scores(chosen_lr, f_divergence_type, f_alpha_divergence_coef)
    rejected_s = _scores(rejected_lr, f_divergence_type, f_alpha_divergence_coef)
    delta = chosen_s - rejected_s
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type in ("ipo", "sigmoid_norm"):  # both on length-normalised scores
        chosen_n, rejected_n = policy.chosen_tokens.clamp(min=1.0), policy.rejected_tokens.clamp(min=1.0)
        d = chosen_s / chosen_n - rejected_s / rejected_n
        return (d - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * d)
    if loss_type == "exo_pair":
        if label_smoothing <= 0:
            raise ValueError("loss_type='exo_pair' needs label_smoothing > 0 (the EXO paper uses 1e-3).")
        eps = torch.tensor(label_smoothing, device=delta.device)
        z = beta * delta
        return torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - torch.log(eps)
        )
    if loss_type == "nca_pair":
        c, r = beta * chosen_lr, beta * rejected_lr
        return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)
    if loss_type == "robust":
        ls = label_smoothing
        return (-(1 - ls) * F.logsigmoid(beta * delta) + ls * F.logsigmoid(-beta * delta)) / (1 - 2 * ls)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_lr) - F.logsigmoid(-beta * rejected_lr)
    if loss_type == "sppo_hard":
        return (chosen_lr - 0.5 / beta) ** 2 + (rejected_lr + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * chosen_lr)) + torch.sigmoid(beta * rejected_lr)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * chosen_lr) + (1 - torch.sigmoid(beta * (chosen_lr - rejected_lr)))
    if loss_type == "sft":
        if sft_token_logps is None:
            raise ValueError("loss_type='sft' needs the chosen completions' per-token log-probs")
        return (-sft_token_logps.mean()).expand(policy.chosen.shape[0])
    raise ValueError(f"loss_type={loss_type!r}: choose one of {list(DPO_LOSS_TYPES)}.")


def cpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen rewards, rejected rewards) of CPO / SimPO (TRL's ``CPOTrainer.cpo_loss``).
    ``chosen``/``rejected`` are summed log-probs, or averaged per token for "ipo" and "simpo";
    ``alpha`` != 0 is AlphaPO's reward transform."""
    if alpha != 0.0:
        chosen_r = (1 - torch.exp(chosen).pow(-alpha)) / alpha
        rejected_r = (1 - torch.exp(rejected).pow(-alpha)) / alpha
    else:
        chosen_r, rejected_r = chosen, rejected
    logits = chosen_r - rejected_r
    if loss_type == "simpo":
        logits = logits - simpo_gamma / beta
    if loss_type in ("sigmoid", "simpo"):
        losses = (
            -F.logsigmoid(beta * logits) * (1 - label_smoothing)
            - F.logsigmoid(-beta * logits) * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}: choose one of {list(CPO_LOSS_TYPES)}.")
    return losses, beta * chosen_r.detach(), beta * rejected_r.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_odds(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float):
    """ORPO's odds-ratio term (TRL's ``ORPOTrainer.odds_ratio_loss``) on per-token mean log-probs:
    returns (β·log σ(log-odds) per pair, log σ(log-odds), log-odds). The loss is NLL minus its mean."""
    c, r = chosen_avg.float(), rejected_avg.float()
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    return beta * ratio, ratio, log_odds


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weighted per-row losses, desirable rows' rewards, undesirable rows' rewards), TRL's KTO.

    ``kl`` is the detached, clamped batch estimate of KL(π‖π_ref) (0 for "apo_zero_unpaired");
    rows keep their order: desirable ones first, then undesirable, as TRL concatenates them."""
    good, bad = labels.bool(), ~labels.bool()
    chosen_lr = logps[good] - ref_logps[good]
    rejected_lr = logps[bad] - ref_logps[bad]
    if loss_type == "kto":
        chosen_l = 1 - torch.sigmoid(beta * (chosen_lr - kl))
        rejected_l = 1 - torch.sigmoid(beta * (kl - rejected_lr))
    elif loss_type == "apo_zero_unpaired":
        chosen_l = 1 - torch.sigmoid(beta * chosen_lr)
        rejected_l = torch.sigmoid(beta * rejected_lr)
    else:
        raise ValueError(f"loss_type={loss_type!r}: choose one of {list(KTO_LOSS_TYPES)}.")
    losses = torch.cat([desirable_weight * chosen_l, undesirable_weight * rejected_l])
    return losses, beta * chosen_lr.detach(), beta * rejected_lr.detach()
