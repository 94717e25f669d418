"""KTO: `KTOConfig` and `KTOTrainer` with TRL 1.15's names, losses and metrics.

Rows are unpaired (``prompt``, ``completion``, ``label``). The KL term is estimated, as in TRL, from
mismatched prompt/completion pairs (each row's prompt with its neighbour's completion) under the
policy and the reference, detached and clamped at 0. A micro-batch's loss is the weighted per-row
losses' sum over the step's rows (TRL's mean per micro-batch when they are equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loris.trainers.preference import PreferenceConfig, PreferenceTrainer
from loris.trainers.preference_loss import KTO_LOSS_TYPES, kto_losses


@dataclass
class KTOConfig(PreferenceConfig):
    """`PreferenceConfig` plus TRL's KTO fields and defaults. ``train_sampling_strategy`` is accepted:
    the KL pairs are fixed per row when the dataset is prepared, so any order keeps them."""

    loss_type: str = "kto"
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    precompute_ref_log_probs: bool = False
    precompute_ref_batch_size: int | None = None
    train_sampling_strategy: str = "sequential"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in KTO_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: choose one of {list(KTO_LOSS_TYPES)}.")


class KTOTrainer(PreferenceTrainer):
    """TRL's `KTOTrainer(model, ref_model, args, train_dataset, eval_dataset, processing_class, ...)`."""

    config_class = KTOConfig
    paired = False

    def __init__(self, model: nn.Module, ref_model: nn.Module | None = None, args: KTOConfig | None = None,
                 train_dataset: Any = None, eval_dataset: Any = None, processing_class: Any = None,
                 data_collator: Any = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(model, ref_model, args, data_collator, train_dataset, eval_dataset,
                         processing_class, **kwargs)  # fmt: skip

    def _with_kl(self, args: Any) -> bool:
        return args.loss_type == "kto"

    def derived_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """``rewards/margins``: a micro-batch's mean chosen minus mean rejected reward, when it has both."""
        if "rewards/chosen" in values and "rewards/rejected" in values:
            return {"rewards/margins": values["rewards/chosen"] - values["rewards/rejected"]}
        return {}

    def _global_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over every rank's rows of this micro-batch (one process: the mean),
        as TRL gathers the KL estimate over processes: the KL term is one number per global batch."""
        if self._ranks.world == 1:
            return values.mean()
        total, count = self._global_totals(float(values.sum()), values.numel())
        return values.new_tensor(total / count)

    def _precompute_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"ref_logps": self.reference_logps(batch["input_ids"], batch["attention_mask"],
                                                  batch["completion_mask"])}  # fmt: skip
        if "KL_input_ids" in batch:
            out["ref_KL_logps"] = self.reference_logps(
                batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]
            )
        return out

    def compute_loss(self, model: nn.Module, batch: dict[str, Any], num_items_in_batch) -> torch.Tensor:
        args: KTOConfig = self.args
        ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        labels = batch["label"].bool()
        with_kl = self._with_kl(args)
        if "ref_logps" in batch:
            ref, ref_kl = batch["ref_logps"], batch.get("ref_KL_logps")
        else:  # before the policy's forward: see preference_ref
            ref = self.reference_logps(ids, mask, comp)
            ref_kl = None
            if with_kl:
                ref_kl = self.reference_logps(
                    batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]
                )
        kl = torch.zeros((), device=ids.device)
        if with_kl:
            with torch.no_grad():
                kl_logps = self.token_logps(
                    model, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]
                ).sum(-1)
                kl = self._global_mean(kl_logps - ref_kl).clamp(min=0)
        logps = self.token_logps(model, ids, mask, comp).sum(-1)
        losses, chosen_r, rejected_r = kto_losses(
            logps,
            ref,
            labels,
            kl,
            loss_type=args.loss_type,
            beta=args.beta,
            desirable_weight=args.desirable_weight,
            undesirable_weight=args.undesirable_weight,
        )
        with torch.no_grad():
            n_good, n_bad = int(labels.sum()), int((~labels).sum())
            self.record(  # sums with their counts (0 when absent): see record(); margins: derived_metrics
                **{
                    "kl": kl,
                    "rewards/chosen": (chosen_r.sum(), n_good),
                    "logps/chosen": (logps[labels].sum(), n_good),
                    "rewards/rejected": (rejected_r.sum(), n_bad),
                    "logps/rejected": (logps[~labels].sum(), n_bad),
                }
            )
        return losses.sum() / num_items_in_batch
