"""Exports from a model sharded with FSDP2: a plain copy of it on rank 0 for the usual export code.

`loris.distributed.wrap.export_on_main_process` gathers the sharded weights to rank 0's CPU (every
rank takes part); `unsharded_copy` then rebuilds the same model class from its config on the meta
device and puts the gathered tensors in place (no second copy of any weight), with the original's
declared state (source folder, tokenizer, name), so `loris.export.hf` / `loris.export.gguf` write
exactly what one process holding those weights would write.

Only full fine-tuning is rebuilt this way: a LoRA model's structure (adapter wrappers, 4-bit base
buffers) is not reproduced from its config, so `check_sharded` refuses it, on every rank, before
anything is gathered.
"""

from __future__ import annotations

import torch
from torch import nn

from loris.distributed.wrap import SHARDED_EXPORT_HELP
from loris.models.decoder import LorisForCausalLM
from loris.models.state import model_state


def check_sharded(model: nn.Module) -> None:
    """Raise (on every rank alike) when an FSDP2-sharded ``model`` cannot be rebuilt for export."""
    if not isinstance(model, LorisForCausalLM):
        raise ValueError(
            f"Exporting an FSDP2-sharded {type(model).__name__} is not supported (only loris' own decoder "
            f"is rebuilt on rank 0). Instead, {SHARDED_EXPORT_HELP}."
        )
    if model_state(model).peft_config is not None:
        raise ValueError(
            "Exports of a LoRA model sharded with FSDP2 are not supported yet (adapters and merges are "
            "exported from full fine-tuning under FSDP2 only). Train LoRA with DDP (leave fsdp unset: every "
            "rank holds the model and save_pretrained / save_pretrained_merged work directly), or save a "
            "training checkpoint and load it in ONE process (no torchrun) with resume_from_checkpoint to "
            "export from there."
        )


def unsharded_copy(model: nn.Module, full_state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (unsharded) model of ``model``'s class and config holding ``full_state``'s tensors
    (rank 0's gathered weights, used in place), sharing ``model``'s declared state."""
    with torch.device("meta"):
        copy = type(model)(model.config)
    tied = model.config.tie_word_embeddings
    state = dict(full_state)
    if tied:
        state.pop("lm_head.weight", None)  # the copy ties it to the embedding again below
    result = copy.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"The gathered weights do not fit a fresh {type(model).__name__} "
            f"(missing: {missing[:5]}, unexpected: {result.unexpected_keys[:5]}). This model's layout "
            f"cannot be rebuilt for export on one rank; {SHARDED_EXPORT_HELP}."
        )
    copy.tie_weights()
    left = [n for n, t in [*copy.named_parameters(), *copy.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(
            f"The rebuilt model still lacks {left[:5]} after gathering; {SHARDED_EXPORT_HELP}."
        )
    copy.state = model_state(model)
    return copy
