"""Next-token choice: repetition penalty, then temperature, top-k, top-p and min-p, as transformers orders them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling; use do_sample=False for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive (multiply negative) logits of every token already in ``seen`` (batch, length)."""
    if penalty == 1.0:
        return logits
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    logits = logits / cfg.temperature if cfg.temperature != 1.0 else logits
    neg = torch.finfo(logits.dtype).min
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, neg)
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum <= (1 - cfg.top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, neg)
    if cfg.min_p > 0.0:
        probs = logits.softmax(-1)
        threshold = cfg.min_p * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, neg)
    return logits


def next_tokens(
    logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row from last-position logits (batch, vocab)."""
    logits = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    if not cfg.do_sample:
        return logits.argmax(-1)
    probs = filter_logits(logits, cfg).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
