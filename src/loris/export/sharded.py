"""Exports from a model sharded with FSDP2: a plain copy of it on rank 0 for the usual export code.

`loris.distributed.wrap.export_on_main_process` gathers the sharded weights to rank 0's CPU (every
rank takes part); `unsharded_copy` then rebuilds the same model class from its config on the meta
device and puts the gathered tensors in place (no second copy of any weight), with the original's
declared state (source folder, tokenizer, name), so `loris.export.hf` / `loris.export.gguf` write
exactly what one process holding those weights would write.

Full fine-tuning and LoRA over a plain (16/32-bit) base are rebuilt: the copy gets the same adapter
wrappers (`loris.lora.inject_lora`, as ``get_peft_model`` adds them) before the gathered tensors go
in. A quantized base (QLoRA's NF4 layers, which the loader builds from the files and a config alone
does not describe) is refused by `check_sharded`, on every rank, before anything is gathered.
"""

from __future__ import annotations

import torch
from torch import nn

from loris.distributed.wrap import SHARDED_EXPORT_HELP
from loris.lora import inject_lora
from loris.models.decoder import LorisForCausalLM
from loris.models.state import model_state


def check_sharded(model: nn.Module) -> None:
    """Raise (on every rank alike) when an FSDP2-sharded ``model`` cannot be rebuilt for export."""
    from loris.quant import QuantizedLinear

    if not isinstance(model, LorisForCausalLM):
        raise ValueError(
            f"Exporting an FSDP2-sharded {type(model).__name__} is not supported (only loris' own decoder "
            f"is rebuilt on rank 0). Instead, {SHARDED_EXPORT_HELP}."
        )
    if any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise ValueError(
            "Exports of a quantized (4-bit / 8-bit) model sharded with FSDP2 are not supported yet. Train "
            "QLoRA with DDP (leave fsdp unset: every rank holds the model and save_pretrained / "
            "save_pretrained_merged work directly), or save a training checkpoint and load it in ONE process "
            "(no torchrun) with resume_from_checkpoint to export from there."
        )


def unsharded_copy(model: nn.Module, full_state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (unsharded) model of ``model``'s class and config holding ``full_state``'s tensors
    (rank 0's gathered weights, used in place), sharing ``model``'s declared state."""
    with torch.device("meta"):
        copy = type(model)(model.config)
        lora = model_state(model).peft_config
        if lora is not None:  # the adapter wrappers, as get_peft_model adds them
            inject_lora(copy, lora)
            if model.config.moe is not None:
                from loris.models.moe import inject_expert_lora

                inject_expert_lora(copy, lora)
    # Tied unless untied since (modules_to_save=["lm_head"] trains its own copy): as on the original.
    tied = model.lm_head.weight is model.embed_tokens.weight
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
    if tied:
        copy.tie_weights()
    left = [n for n, t in [*copy.named_parameters(), *copy.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(
            f"The rebuilt model still lacks {left[:5]} after gathering; {SHARDED_EXPORT_HELP}."
        )
    copy.state = model_state(model)
    return copy
