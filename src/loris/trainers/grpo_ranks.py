"""GRPO over several ranks: which completions each rank generates, and advantages over whole groups.

One generation batch of the single-process run with ``per_device_train_batch_size × world``
completions per micro-batch is laid out prompt-major (prompt p's ``num_generations`` completions are
rows p·n … p·n+n-1). Rank r generates, scores and trains on its slice of each micro-batch: rows
``j·b·W + r·b … + b`` for micro-batch j (b = per-device batch, W = world size). Its micro-batches
therefore hold the same completions, and its loss the same terms, as that micro-batch's share of the
single-process run; a group may span ranks, so rewards are all-gathered and advantages computed
over the whole generation batch (`global_advantages`), then each rank keeps its own rows.
"""

from __future__ import annotations

import torch

from loris.distributed.env import all_gather_rows
from loris.trainers.grpo_loss import group_advantages


def rank_completion_rows(total: int, batch_size: int, world: int, rank: int) -> list[int]:
    """The global completion rows (of ``total``, prompt-major) that ``rank`` generates and trains on."""
    step = batch_size * world
    if total % step:
        raise ValueError(
            f"{total} completions do not split into micro-batches of {batch_size} x {world} ranks."
        )
    return [j * step + rank * batch_size + k for j in range(total // step) for k in range(batch_size)]


def global_advantages(
    local_rewards: torch.Tensor,
    local_rows: list[int],
    total: int,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(this rank's advantages, every row's per-function rewards, every row's summed reward, every
    row's advantage), with groups and ``scale_rewards`` over the whole generation batch.

    ``local_rewards`` is (len(local_rows), functions): this rank's rewards of ``local_rows``."""
    rows = torch.tensor(local_rows, dtype=torch.long)
    gathered = all_gather_rows(local_rewards.float().cpu())
    where = all_gather_rows(rows)
    full = torch.full((total, local_rewards.shape[1]), float("nan"))
    full[where] = gathered
    adv, summed, _ = group_advantages(full, weights.float().cpu(), num_generations, scale_rewards)
    return adv[rows].to(local_rewards.device), full, summed, adv
