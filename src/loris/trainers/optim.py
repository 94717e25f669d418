"""The optimizer: parameter groups (weight decay, embedding learning rate) and the `optim` names."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from loris.trainers.config import TrainingConfig

EMBEDDING_MODULES = ("embed_tokens", "lm_head")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm weights (any 1-D tensor) are not decayed, as in transformers."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def _is_embedding(name: str) -> bool:
    parts = name.split(".")
    return any(m in parts for m in EMBEDDING_MODULES)


def parameter_groups(model: nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """Trainable parameters split by (decay, no decay) × (body, embeddings) — empty groups dropped.

    The embeddings group (``embed_tokens`` / ``lm_head``, trained e.g. for continued pretraining)
    exists only when ``embedding_learning_rate`` is set, as in Unsloth's `UnslothTrainer`. Each group
    carries a ``name`` so logs and checkpoints are readable.
    """
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        embed = config.embedding_learning_rate is not None and _is_embedding(name)
        groups.setdefault((embed, _no_decay(name, param)), []).append(param)
    if not groups:
        raise ValueError(
            "The model has no trainable parameters: add LoRA adapters (FastLanguageModel.get_peft_model) "
            "or load with full_finetuning=True."
        )
    out = []
    for (embed, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
                "lr": config.embedding_learning_rate if embed else config.learning_rate,
                "name": ("embeddings" if embed else "body") + ("_no_decay" if no_decay else ""),
            }
        )
    return out


def _fused_ok(groups: list[dict[str, Any]]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return all(p.is_floating_point() and (p.is_cuda or p.device.type == "cpu") for p in params)


def _bitsandbytes_optimizer(optim: str, groups: list[dict[str, Any]], config: TrainingConfig):
    """bitsandbytes' 8-bit / paged AdamW, or None (with a warning) when it cannot run here."""
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # not installed, or its native library failed to load
        warnings.warn(
            f"optim={optim!r} needs bitsandbytes ({exc}); falling back to adamw_torch.", stacklevel=3
        )
        return None
    if not on_cuda:
        warnings.warn(
            f"optim={optim!r} needs parameters on a CUDA GPU; falling back to adamw_torch.", stacklevel=3
        )
        return None
    cls = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "adamw_bnb_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
    }[optim]
    return cls(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optim`` over the model's trainable parameters."""
    groups = parameter_groups(model, config)
    optim = config.optim
    if optim == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    if optim not in ("adamw_torch", "adamw_torch_fused"):
        bnb_opt = _bitsandbytes_optimizer(optim, groups, config)
        if bnb_opt is not None:
            return bnb_opt
        optim = "adamw_torch"
    fused = optim == "adamw_torch_fused" and _fused_ok(groups)
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        fused=fused or None,
    )
