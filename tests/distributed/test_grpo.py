"""GRPO across 2 CPU ranks: each rank generates its share of a generation batch, and the advantages it
trains on are those of the whole batch's groups, as one process computes them (`group_advantages`)."""

from __future__ import annotations

import pytest
import torch
from spawn import run_ranks
from workers import grpo_rollouts

from loris.trainers.grpo_loss import group_advantages
from loris.trainers.grpo_ranks import rank_completion_rows


def test_rank_rows_cover_the_generation_batch_once():
    rows = [rank_completion_rows(16, 2, 2, r) for r in range(2)]
    assert rows[0] == [0, 1, 4, 5, 8, 9, 12, 13] and rows[1] == [2, 3, 6, 7, 10, 11, 14, 15]
    with pytest.raises(ValueError, match="micro-batches"):
        rank_completion_rows(10, 4, 2, 0)


def _rewards(completions: torch.Tensor) -> torch.Tensor:
    """The workers' two reward functions, recomputed here from the token ids (0 is padding)."""
    out = []
    for row in completions.tolist():
        ids = [t for t in row if t != 0]
        out.append([float(sum(1 for t in ids if t % 3 == 0)), len(ids) / 4])
    return torch.tensor(out)


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_advantages_over_ranks_equal_single_process(saved_family, tmp_path, scale):
    folder = saved_family("llama")[1]
    run_ranks(2, grpo_rollouts, str(folder), str(tmp_path), {"scale_rewards": scale})
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]["rollouts"]) == len(ranks[1]["rollouts"]) >= 2
    for step in range(len(ranks[0]["rollouts"])):
        parts = [rk["rollouts"][step] for rk in ranks]
        rows = parts[0]["rows"] + parts[1]["rows"]
        assert sorted(rows) == list(range(len(rows)))  # the ranks' rows partition the batch
        width = max(p["completions"].shape[1] for p in parts)
        comps = torch.zeros(len(rows), width, dtype=torch.long)
        adv = torch.zeros(len(rows))
        for p in parts:
            comps[p["rows"], : p["completions"].shape[1]] = p["completions"]
            adv[p["rows"]] = p["adv"]
        rewards = _rewards(comps)
        groups = rewards.sum(1).view(-1, 4)
        assert bool((groups.std(1) > 0).any()), "every group tied: the test would not see a grouping mistake"
        expected, _, _ = group_advantages(rewards, torch.ones(2), 4, scale)
        torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)
    for name, w in ranks[0]["weights"].items():  # DDP kept the ranks' adapters identical
        torch.testing.assert_close(ranks[1]["weights"][name], w, rtol=0, atol=0, msg=name)
