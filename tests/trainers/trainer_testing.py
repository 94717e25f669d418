"""Small shared pieces for the trainer tests: token rows, a step recorder, plain-PyTorch reference bits."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from loris.trainers import TrainerCallback


def token_rows(lengths: list[int], seed: int = 0) -> list[dict]:
    """Pre-tokenized rows of the given lengths (word ids 4..159 of the tiny vocabulary)."""
    rng = random.Random(seed)
    return [{"input_ids": [rng.randrange(4, 160) for _ in range(n)]} for n in lengths]


class Record(TrainerCallback):
    """Keeps every step's logs (loss, grad_norm, learning_rate) by step number."""

    def __init__(self, stop_at: int | None = None, crash_at: int | None = None) -> None:
        self.steps: dict[int, dict] = {}
        self.draws: dict[int, tuple] = {}
        self.crash_at = crash_at

    def on_step_end(self, state, logs) -> None:
        self.steps[state.global_step] = dict(logs)
        # one draw from each generator: equal draws after resume show the RNG states were restored
        import numpy as np

        self.draws[state.global_step] = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        if state.global_step == self.crash_at:
            raise KeyboardInterrupt("simulated crash")


def pad_batch(rows: list[dict], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, written independently of the library's collator."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return ids, mask


def summed_token_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over real tokens, from full logits (no fused kernel)."""
    logits = model(ids, attention_mask=mask, return_logits=True).logits
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def epoch_batches(num_rows: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The documented data order: torch.randperm with generator seeded by seed + epoch."""
    perm = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [perm[i : i + batch_size] for i in range(0, num_rows, batch_size)]
