"""CPO and SimPO: `CPOConfig` and `CPOTrainer` with TRL's names (``trl.experimental.cpo``).

SimPO is ``CPOConfig(loss_type="simpo", cpo_alpha=0.0)`` (TRL's recipe): a reference-free sigmoid
loss on per-token mean log-probs with the target margin ``simpo_gamma``. ``cpo_alpha`` weights the
NLL of the chosen answers (CPO's behaviour-cloning term). "ipo" and "simpo" average log-probs per
token; "sigmoid" and "hinge" sum them. ``alpha`` != 0 is AlphaPO's reward transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loris.trainers.preference import PreferenceConfig, PreferenceTrainer
from loris.trainers.preference_loss import CPO_LOSS_TYPES, cpo_losses


@dataclass
class CPOConfig(PreferenceConfig):
    """`PreferenceConfig` plus TRL's CPO fields and defaults."""

    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    cpo_alpha: float = 1.0
    simpo_gamma: float = 0.5
    alpha: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in CPO_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: choose one of {list(CPO_LOSS_TYPES)}.")


class CPOTrainer(PreferenceTrainer):
    """TRL's `CPOTrainer(model, args, data_collator, train_dataset, eval_dataset, processing_class, ...)`."""

    config_class = CPOConfig
    uses_reference = False

    def __init__(self, model: nn.Module, args: CPOConfig | None = None, data_collator: Any = None,
                 train_dataset: Any = None, eval_dataset: Any = None, processing_class: Any = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(model, kwargs.pop("ref_model", None), args, data_collator, train_dataset,
                         eval_dataset, processing_class, **kwargs)  # fmt: skip

    def compute_loss(self, model: nn.Module, batch: dict[str, Any], num_items_in_batch) -> torch.Tensor:
        args: CPOConfig = self.args
        ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        half = ids.shape[0] // 2
        token = self.token_logps(model, ids, mask, comp)
        sums = token.sum(-1)
        counts = comp[:, 1:].sum(-1).to(sums.dtype)
        logps = sums / counts if args.loss_type in ("ipo", "simpo") else sums
        losses, chosen_r, rejected_r = cpo_losses(
            logps[:half],
            logps[half:],
            loss_type=args.loss_type,
            beta=args.beta,
            label_smoothing=args.label_smoothing,
            simpo_gamma=args.simpo_gamma,
            alpha=args.alpha,
        )
        loss = losses.mean()
        nll = sums.new_zeros(())
        if args.cpo_alpha != 0:
            nll = -sums[:half].sum() / counts[:half].sum()
            loss = loss + args.cpo_alpha * nll
        with torch.no_grad():
            self.record(
                **{
                    "rewards/chosen": chosen_r.mean(),
                    "rewards/rejected": rejected_r.mean(),
                    "rewards/accuracies": (chosen_r > rejected_r).float().mean(),
                    "rewards/margins": (chosen_r - rejected_r).mean(),
                    "logps/chosen": logps[:half].mean(),
                    "logps/rejected": logps[half:].mean(),
                    "nll_loss": nll,
                }
            )
        return loss * (half / num_items_in_batch)
