"""`FastLanguageModel`: the entry point Unsloth users know, over loris' own model and loaders."""

from __future__ import annotations

import logging
from typing import Any

import torch

from loris.models.decoder import LorisForCausalLM
from loris.models.loading import load_model, pick_device, pick_dtype, resolve_source
from loris.tokenizer import ensure_pad_token, load_tokenizer

logger = logging.getLogger(__name__)

# Arguments Unsloth's loader takes that change nothing here (loris always uses its own engine).
_ACCEPTED_NOOP_KWARGS = {
    "fix_tokenizer",
    "use_gradient_checkpointing",
    "resize_model_vocab",
    "use_exact_model_name",
    "offload_embedding",
    "random_state",
    "fast_inference",
    "gpu_memory_utilization",
    "float8_kv_cache",
    "max_lora_rank",
    "disable_log_stats",
    "attn_implementation",
    "local_files_only",
    "load_in_16bit",
}


def is_bfloat16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


class FastLanguageModel:
    """Namespace of static methods, as in Unsloth: ``model, tok = FastLanguageModel.from_pretrained(...)``."""

    @staticmethod
    def from_pretrained(
        model_name: str,
        max_seq_length: int = 2048,
        dtype: torch.dtype | str | None = None,
        load_in_4bit: bool = True,
        load_in_8bit: bool = False,
        full_finetuning: bool = False,
        token: str | None = None,
        device_map: Any = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> tuple[LorisForCausalLM, Any]:
        """Load a model and its tokenizer from a local folder, a Hub id or a .gguf file.

        ``load_in_4bit`` stores the linear projections as NF4 (bitsandbytes layout, double quantized);
        ``load_in_8bit`` as int8; embeddings, norms and the LM head stay 16-bit. ``dtype=None`` picks
        bf16 where the GPU has it, else fp16 on GPU and fp32 on CPU.
        """
        unknown = set(kwargs) - _ACCEPTED_NOOP_KWARGS
        if unknown:
            raise TypeError(f"from_pretrained() got unexpected arguments: {', '.join(sorted(unknown))}")
        if load_in_4bit and load_in_8bit:
            raise ValueError(
                "load_in_4bit and load_in_8bit are exclusive: choose one (or neither for 16-bit)."
            )
        if full_finetuning and (load_in_4bit or load_in_8bit):
            logger.warning("full_finetuning trains 16-bit weights: loading without 4/8-bit quantization.")
            load_in_4bit = load_in_8bit = False
        if kwargs.get("load_in_16bit"):
            load_in_4bit = load_in_8bit = False
        device = pick_device(device_map)
        dtype = pick_dtype(dtype, device)
        source = resolve_source(model_name, token=token, revision=revision)
        quantization = "nf4" if load_in_4bit else "int8" if load_in_8bit else None
        model = load_model(source, dtype=dtype, device=device, quantization=quantization)
        tokenizer = load_tokenizer(
            source.folder, source.gguf_file, trust_remote_code=trust_remote_code, token=token
        )
        ensure_pad_token(tokenizer, model.config.vocab_size)
        tokenizer.padding_side = "left"  # ready for generation; get_peft_model / for_training flip it
        model.max_seq_length = max_seq_length
        model.tokenizer = tokenizer
        model.name_or_path = str(model_name)
        if full_finetuning:
            for p in model.parameters():
                p.requires_grad_(True)
        return model, tokenizer

    @staticmethod
    def for_inference(model: LorisForCausalLM) -> LorisForCausalLM:
        model.eval()
        tok = getattr(model, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"
        return model

    @staticmethod
    def for_training(
        model: LorisForCausalLM, use_gradient_checkpointing: bool | str = True
    ) -> LorisForCausalLM:
        model.train()
        tok = getattr(model, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "right"
        return model


FastModel = FastLanguageModel
