"""DPO: `DPOConfig` and `DPOTrainer` with TRL 1.15's names, losses and metrics, on loris' memory path.

    trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(beta=0.1, ...),
                         train_dataset=ds, processing_class=tokenizer)
    trainer.train()

Each micro-batch runs chosen and rejected sequences as one batch; the reference pass (no_grad; the
starting policy, see `preference_ref`) comes first, then the policy's, whose log-probs come from
the hidden states in chunks. Logged as TRL does: ``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from loris.trainers.preference import PreferenceConfig, PreferenceTrainer
from loris.trainers.preference_loss import DPO_LOSS_TYPES, F_DIVERGENCES, PairLogps, dpo_losses


@dataclass
class DPOConfig(PreferenceConfig):
    """`PreferenceConfig` plus TRL's DPO fields. ``loss_type`` is one name or a list combined with
    ``loss_weights`` (TRL's MPO); ``rpo_alpha`` (older TRL) adds the chosen answers' NLL with that
    weight, which is TRL 1.15's ``loss_type=[..., "sft"]``. ``ref_adapter_name``/``model_adapter_name``
    and ``sync_ref_model`` (TR-DPO) are not supported."""

    loss_type: str | list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    rpo_alpha: float | None = None
    precompute_ref_log_probs: bool = False
    precompute_ref_batch_size: int | None = None
    ld_alpha: float | None = None
    use_weighting: bool = False
    sync_ref_model: bool = False
    reference_free: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        if self.loss_weights is None:
            self.loss_weights = [1.0] * len(self.loss_type)
        if len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} loss types."
            )
        if self.rpo_alpha is not None and "sft" not in self.loss_type:
            self.loss_type.append("sft")
            self.loss_weights = [*self.loss_weights, float(self.rpo_alpha)]
        bad = [t for t in self.loss_type if t not in DPO_LOSS_TYPES]
        if bad:
            raise ValueError(f"loss_type {bad} is not supported; choose from {list(DPO_LOSS_TYPES)}.")
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ValueError(
                f"f_divergence_type={self.f_divergence_type!r}: choose one of {list(F_DIVERGENCES)}."
            )
        if "exo_pair" in self.loss_type and self.label_smoothing == 0.0:
            raise ValueError("loss_type='exo_pair' needs label_smoothing > 0 (the EXO paper uses 1e-3).")
        unsupported = {
            "ld_alpha": self.ld_alpha is not None,
            "use_weighting": self.use_weighting,
            "sync_ref_model": self.sync_ref_model,
            "reference_free": self.reference_free,
        }
        named = [k for k, on in unsupported.items() if on]
        if named:
            raise ValueError(f"{named} are not supported by loris' DPOTrainer; leave them at their defaults.")


class DPOTrainer(PreferenceTrainer):
    """TRL's `DPOTrainer` signature: ``(model, ref_model, args, data_collator, train_dataset,
    eval_dataset, processing_class, ...)``; ``tokenizer=`` and old keywords (``beta=``,
    ``max_length=``, ``max_prompt_length=``) are accepted as Unsloth's notebooks pass them."""

    config_class = DPOConfig

    def compute_loss(self, model: nn.Module, batch: dict[str, Any], num_items_in_batch) -> torch.Tensor:
        args: DPOConfig = self.args
        ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        half = ids.shape[0] // 2
        if "ref_chosen_logps" in batch:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:  # before the policy's forward: see preference_ref
            ref = self.reference_logps(ids, mask, comp)
            ref_c, ref_r = ref[:half], ref[half:]
        token = self.token_logps(model, ids, mask, comp)
        sums = token.sum(-1)
        lengths = comp.sum(-1).to(sums.dtype)
        policy = PairLogps(sums[:half], sums[half:], lengths[:half], lengths[half:])
        loss = sums.new_zeros(())
        for loss_type, weight in zip(args.loss_type, args.loss_weights, strict=True):
            sft = token[:half][comp[:half, 1:].bool()] if loss_type == "sft" else None
            if sft is not None and self._ranks.world > 1:
                # the chosen answers' token mean over the whole global micro-batch (every rank's
                # tokens), counted once per pair of it, as one process computes it
                pairs, tokens = self._global_totals(half, sft.numel())
                loss = loss - weight * sft.sum() * (pairs / max(tokens, 1.0))
                continue
            per_pair = dpo_losses(
                policy,
                ref_c,
                ref_r,
                loss_type=loss_type,
                beta=args.beta,
                label_smoothing=args.label_smoothing,
                f_divergence_type=args.f_divergence_type,
                f_alpha_divergence_coef=args.f_alpha_divergence_coef,
                sft_token_logps=sft,
            )
            loss = loss + weight * per_pair.sum()
        with torch.no_grad():
            chosen_r = args.beta * (policy.chosen - ref_c)
            rejected_r = args.beta * (policy.rejected - ref_r)
            self.record(  # sums over this micro-batch's pairs, with their count: see record()
                **{
                    "rewards/chosen": (chosen_r.sum(), half),
                    "rewards/rejected": (rejected_r.sum(), half),
                    "rewards/accuracies": ((chosen_r > rejected_r).sum(), half),
                    "rewards/margins": ((chosen_r - rejected_r).sum(), half),
                    "logps/chosen": (policy.chosen.sum(), half),
                    "logps/rejected": (policy.rejected.sum(), half),
                }
            )
        return loss / num_items_in_batch


def PatchDPOTrainer() -> None:  # noqa: N802 - Unsloth's name
    """Unsloth's patch entry point, accepted so notebooks port unchanged: loris' `DPOTrainer` is
    already its own fast implementation, so there is nothing to patch."""
    return None
