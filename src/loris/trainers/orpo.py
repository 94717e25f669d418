"""ORPO: `ORPOConfig` and `ORPOTrainer` with TRL's names (``trl.experimental.orpo``), no reference model.

The loss is the chosen sequences' NLL minus β·mean log σ(log-odds ratio), where the odds come from
the per-token mean log-probs of the chosen and rejected answers. As in TRL, the NLL covers every
token of the chosen sequence (prompt and answer); ``rewards/*`` are β × those mean log-probs.
Tokenizing is the DPO one (see `loris.data.preference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loris.trainers.preference import PreferenceConfig, PreferenceTrainer
from loris.trainers.preference_loss import orpo_odds


@dataclass
class ORPOConfig(PreferenceConfig):
    """`PreferenceConfig` with TRL's ORPO defaults (lr 1e-6, beta 0.1 — the paper's λ)."""


class ORPOTrainer(PreferenceTrainer):
    """TRL's `ORPOTrainer(model, args, data_collator, train_dataset, eval_dataset, processing_class, ...)`."""

    config_class = ORPOConfig
    uses_reference = False

    def __init__(self, model: nn.Module, args: ORPOConfig | None = None, data_collator: Any = None,
                 train_dataset: Any = None, eval_dataset: Any = None, processing_class: Any = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(model, kwargs.pop("ref_model", None), args, data_collator, train_dataset,
                         eval_dataset, processing_class, **kwargs)  # fmt: skip

    def compute_loss(self, model: nn.Module, batch: dict[str, Any], num_items_in_batch) -> torch.Tensor:
        args: ORPOConfig = self.args
        ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        half = ids.shape[0] // 2
        # chosen rows: every real token (their NLL); rejected rows: the answer only
        score = torch.cat([mask[:half], comp[half:]])
        token = self.token_logps(model, ids, mask, score)
        answer = comp[:, 1:].to(token.dtype)
        mean_logps = (token * answer).sum(-1) / answer.sum(-1)
        seen = mask[:half, 1:].to(token.dtype)
        nll = -(token[:half] * seen).sum() / seen.sum()
        term, ratio, log_odds = orpo_odds(mean_logps[:half], mean_logps[half:], args.beta)
        loss = nll - term.mean()
        with torch.no_grad():
            chosen_r, rejected_r = args.beta * mean_logps[:half], args.beta * mean_logps[half:]
            self.record(
                **{
                    "rewards/chosen": chosen_r.mean(),
                    "rewards/rejected": rejected_r.mean(),
                    "rewards/accuracies": (chosen_r > rejected_r).float().mean(),
                    "rewards/margins": (chosen_r - rejected_r).mean(),
                    "logps/chosen": mean_logps[:half].mean(),
                    "logps/rejected": mean_logps[half:].mean(),
                    "nll_loss": nll,
                    "log_odds_ratio": ratio.mean(),
                    "log_odds_chosen": log_odds.mean(),
                }
            )
        return loss * (half / num_items_in_batch)
