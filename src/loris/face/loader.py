"""`FastLanguageModel`: the entry point Unsloth users know, over loris' own model and loaders.

It builds the face's model class (`loris.face.model.LorisModel`) and fills in its declared state
(`loris.models.state.ModelState`): where the model came from, its tokenizer and sequence length,
and, after `get_peft_model`, the adapter settings and checkpointing mode."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from loris.face.model import GenericModel, LorisModel
from loris.models.decoder import LorisForCausalLM
from loris.models.generic import GenericCausalLM
from loris.models.loading import load_model, pick_device, pick_dtype, resolve_source
from loris.models.state import DEFAULT_MAX_SEQ_LENGTH, ModelState
from loris.tokenizer import ensure_pad_token, load_tokenizer

logger = logging.getLogger(__name__)

# Arguments Unsloth's loader takes that change nothing here.
_ACCEPTED_NOOP_KWARGS = {
    "fix_tokenizer",
    "use_gradient_checkpointing",
    "resize_model_vocab",
    "use_exact_model_name",  # loris never renames models (no "-bnb-4bit" mapping)
    "offload_embedding",
    "random_state",
    "attn_implementation",
    "local_files_only",
    "load_in_16bit",
}
# Settings of Unsloth's vLLM engine: loris generates with its own in-process engine, always.
_ENGINE_KWARGS = {
    "fast_inference",
    "gpu_memory_utilization",
    "float8_kv_cache",
    "max_lora_rank",
    "disable_log_stats",
}
_engine_note_given = False


def _note_engine_kwargs(kwargs: dict[str, Any]) -> None:
    """Say once per process that vLLM settings are accepted and what loris does instead."""
    global _engine_note_given
    given = sorted(k for k in _ENGINE_KWARGS if k in kwargs)
    if not given or _engine_note_given:
        return
    _engine_note_given = True
    logger.warning(
        "loris: %s accepted for compatibility; loris has no vLLM: model.fast_generate and GRPO rollouts "
        "use loris's in-process engine (KV cache, CUDA graphs on GPU) on the training weights, so no "
        "memory is set aside for a second engine.",
        ", ".join(given),
    )


def is_bfloat16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


class FastLanguageModel:
    """Namespace of static methods, as in Unsloth: ``model, tok = FastLanguageModel.from_pretrained(...)``."""

    @staticmethod
    def from_pretrained(
        model_name: str,
        max_seq_length: int | None = None,
        dtype: torch.dtype | str | None = None,
        load_in_4bit: bool = True,
        load_in_8bit: bool = False,
        full_finetuning: bool = False,
        token: str | None = None,
        device_map: Any = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        rope_scaling: dict | None = None,
        **kwargs: Any,
    ) -> tuple[LorisModel, Any]:
        """Load a model and its tokenizer from a local folder, a Hub id or a .gguf file.

        ``load_in_4bit`` stores the linear projections as NF4 (bitsandbytes layout, double quantized);
        ``load_in_8bit`` as int8; embeddings, norms and the LM head stay 16-bit. ``dtype=None`` picks
        bf16 where the GPU has it, else fp16 on GPU and fp32 on CPU.

        ``max_seq_length`` (default 2048) beyond the model's ``max_position_embeddings`` stretches RoPE
        linearly (position interpolation by ``max_seq_length / max_position_embeddings``, as Unsloth
        does) unless the model already uses another rope scaling. Unlike Unsloth, only a
        ``max_seq_length`` you pass does this: the default never changes the model.
        ``rope_scaling={"type": "linear" | "dynamic", "factor": f}`` sets the scaling explicitly. vLLM settings (``fast_inference``, ``gpu_memory_utilization``,
        ``max_lora_rank``, ``float8_kv_cache``) are accepted; loris's own engine always generates.
        """
        unknown = set(kwargs) - _ACCEPTED_NOOP_KWARGS - _ENGINE_KWARGS
        if unknown:
            raise TypeError(
                f"from_pretrained() got unexpected arguments: {', '.join(sorted(unknown))}. It takes "
                "Unsloth's loader arguments (model_name, max_seq_length, dtype, load_in_4bit, load_in_8bit, "
                "load_in_16bit, full_finetuning, token, device_map, rope_scaling, fast_inference, ...)."
            )
        _note_engine_kwargs(kwargs)
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
        if (source.folder / "adapter_config.json").exists() and source.gguf_file is None:
            return _load_with_adapter(
                source.folder, max_seq_length, dtype, load_in_4bit, load_in_8bit, token, device_map, revision
            )
        quantization = "nf4" if load_in_4bit else "int8" if load_in_8bit else None
        model = load_model(
            source,
            dtype=dtype,
            device=device,
            quantization=quantization,
            model_class=LorisModel,
            trust_remote_code=trust_remote_code,
            token=token,
            generic_class=GenericModel,
        )
        if isinstance(model, GenericCausalLM):
            _check_generic_context(model, max_seq_length, rope_scaling)
        else:
            _fit_context(model, max_seq_length, rope_scaling)
        tokenizer = load_tokenizer(
            source.folder, source.gguf_file, trust_remote_code=trust_remote_code, token=token
        )
        ensure_pad_token(tokenizer, model.config.vocab_size)
        tokenizer.padding_side = "left"  # ready for generation; get_peft_model / for_training flip it
        model.state = ModelState(
            name_or_path=source.hub_id or str(model_name),  # a bundled model: its id, never its path
            source_folder=source.folder,  # where the original weights are (merged exports reuse them)
            source_gguf_file=source.gguf_file,
            max_seq_length=max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
            tokenizer=tokenizer,
        )
        if full_finetuning:
            for p in model.parameters():
                p.requires_grad_(True)
        return model, tokenizer

    @staticmethod
    def get_peft_model(
        model: LorisForCausalLM,
        r: int = 16,
        target_modules: list[str] | str | None = None,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        bias: str = "none",
        layers_to_transform: list[int] | int | None = None,
        layers_pattern: str | None = None,
        use_gradient_checkpointing: bool | str = True,
        random_state: int = 3407,
        max_seq_length: int | None = None,
        use_rslora: bool = False,
        modules_to_save: list[str] | None = None,
        init_lora_weights: bool | str = True,
        loftq_config: dict | None = None,
        **kwargs: Any,
    ) -> LorisForCausalLM:
        """Add LoRA adapters to the projection slots (Unsloth's arguments and defaults).

        ``use_gradient_checkpointing``: True (per-block recompute), False, "auto" (throughput mode: blocks
        keep their activations as far as the first step's free memory allows, the rest recompute), or
        "offload" (alias "unsloth":
        each block's input waits in pinned CPU memory until backward).
        """
        from loris.checkpointing import make_checkpoint_fn
        from loris.lora import PROJECTIONS, LoraConfig, inject_lora
        from loris.models.generic import default_targets, inject_generic_lora, linear_names

        generic = isinstance(model, GenericCausalLM)
        if target_modules is None:
            target_modules = default_targets(model) if generic else list(PROJECTIONS)

        if kwargs.pop("use_dora", False):
            raise ValueError("use_dora=True is not supported; loris trains plain LoRA")
        kwargs.pop("ensure_weight_tying", None)
        if kwargs:
            raise TypeError(f"get_peft_model() got unexpected arguments: {', '.join(sorted(kwargs))}")
        if loftq_config:
            raise ValueError("LoftQ initialisation is not supported; drop loftq_config")
        cfg = LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
            bias=bias,
            use_rslora=use_rslora,
            modules_to_save=list(modules_to_save) if modules_to_save else None,
            init_lora_weights=init_lora_weights,
            layers_to_transform=layers_to_transform,
            random_state=random_state,
            known_modules=tuple(linear_names(model)) if generic else PROJECTIONS,
        )
        checkpoint_fn = make_checkpoint_fn(use_gradient_checkpointing)
        state = model.state
        existing = state.peft_config
        if existing is not None:
            if existing == cfg:
                logger.warning(
                    "get_peft_model was called twice with the same arguments: keeping the adapters"
                )
                return model
            raise ValueError(
                "this model already has LoRA adapters with different settings; reload the base model to change them"
            )
        if any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "the model was loaded for full fine-tuning; load it without full_finetuning for LoRA"
            )
        if generic:  # transformers' own per-layer checkpointing, offloaded or not
            inject_generic_lora(model, cfg)
            model.gradient_checkpointing = use_gradient_checkpointing
        else:
            inject_lora(model, cfg)
            if model.config.moe is not None:  # the experts' stacked weights (loris.models.moe)
                from loris.models.moe import inject_expert_lora

                inject_expert_lora(model, cfg)
            model.gradient_checkpointing = checkpoint_fn
        state.peft_config = cfg
        state.checkpointing = use_gradient_checkpointing
        if max_seq_length:
            state.max_seq_length = max_seq_length
        if state.tokenizer is not None:
            state.tokenizer.padding_side = "right"
        model.train()
        return model

    @staticmethod
    def for_inference(model: LorisForCausalLM) -> LorisForCausalLM:
        model.eval()
        tok = model.state.tokenizer
        if tok is not None:
            tok.padding_side = "left"
        return model

    @staticmethod
    def for_training(
        model: LorisForCausalLM, use_gradient_checkpointing: bool | str = True
    ) -> LorisForCausalLM:
        model.train()
        tok = model.state.tokenizer
        if tok is not None:
            tok.padding_side = "right"
        return model


def _fit_context(model: LorisForCausalLM, max_seq_length: int, rope_scaling: dict | None) -> None:
    from loris.models.rope import extend_context, set_rope_scaling

    cfg = model.config
    if rope_scaling is not None:
        rope = set_rope_scaling(cfg, rope_scaling)
        logger.info("RoPE scaling set to %s, factor %g", rope.rope_type, rope.factor)
        return
    context = cfg.max_position_embeddings
    factor = extend_context(cfg, max_seq_length)
    if factor is not None:
        logger.warning(
            "max_seq_length=%d is beyond the model's context of %d tokens: RoPE is scaled linearly by %g "
            "(position interpolation) so every position maps into the trained range.",
            max_seq_length,
            context,
            factor,
        )
    elif max_seq_length and max_seq_length > context:
        logger.warning(
            "max_seq_length=%d is beyond the model's context of %d tokens and its RoPE already uses %r "
            "scaling, which is kept: positions past %d were not trained. Pass rope_scaling={'type': "
            "'linear', 'factor': f} to stretch it yourself, or lower max_seq_length.",
            max_seq_length,
            context,
            cfg.rope.rope_type,
            context,
        )


def _check_generic_context(model: GenericCausalLM, max_seq_length: int | None, rope_scaling) -> None:
    """The generic path leaves RoPE as transformers configured it: say so when asked to stretch it."""
    if rope_scaling is not None:
        raise ValueError(
            f"rope_scaling is applied to loris' native families only; {model.config.model_type} runs on the "
            "generic path: set rope_parameters in its config.json instead."
        )
    context = model.config.max_position_embeddings
    if max_seq_length and context and max_seq_length > context:
        logger.warning(
            "max_seq_length=%d is beyond the model's context of %d tokens; on the generic path loris keeps "
            "transformers' RoPE as configured (positions past %d were not trained).",
            max_seq_length,
            context,
            context,
        )


def _load_with_adapter(
    folder, max_seq_length, dtype, load_in_4bit, load_in_8bit, token, device_map, revision
):
    """A PEFT adapter folder: load its base model, then the adapter (trainable, ready to continue)."""
    from loris.peft_format import load_adapter_weights, lora_config_from_peft, read_adapter_config

    peft_cfg = read_adapter_config(folder)
    base = peft_cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{folder}/adapter_config.json names no base_model_name_or_path; set it to the base model"
        )
    model, tokenizer = FastLanguageModel.from_pretrained(
        base,
        max_seq_length=max_seq_length,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        load_in_8bit=load_in_8bit,
        token=token,
        device_map=device_map,
        revision=revision,
    )
    from loris.lora import PROJECTIONS
    from loris.models.generic import linear_names

    known = tuple(linear_names(model)) if isinstance(model, GenericCausalLM) else PROJECTIONS
    lcfg = lora_config_from_peft(peft_cfg, known)
    model = FastLanguageModel.get_peft_model(
        model,
        r=lcfg.r,
        target_modules=lcfg.target_modules,
        lora_alpha=lcfg.lora_alpha,
        lora_dropout=lcfg.lora_dropout,
        use_rslora=lcfg.use_rslora,
        modules_to_save=lcfg.modules_to_save,
        layers_to_transform=lcfg.layers_to_transform,
    )
    load_adapter_weights(model, folder, peft_cfg)
    if (Path(folder) / "tokenizer_config.json").exists():
        from loris.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(Path(folder))
        ensure_pad_token(tokenizer, model.config.vocab_size)
        model.state.tokenizer = tokenizer
    tokenizer.padding_side = "left"
    return model, tokenizer


class FastModel(FastLanguageModel):
    """Unsloth's `FastModel` for text models: `FastLanguageModel` plus its ``finetune_*`` switches.

    loris trains decoder-only text models (Gemma 3 checkpoints load as their text tower), so there
    are no vision layers: ``finetune_vision_layers=True`` is an error, None (the default) or False
    is fine.
    """

    @staticmethod
    def get_peft_model(
        model: LorisForCausalLM,
        r: int = 16,
        target_modules: list[str] | str | None = None,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        bias: str = "none",
        finetune_vision_layers: bool | None = None,
        finetune_language_layers: bool = True,
        finetune_attention_modules: bool = True,
        finetune_mlp_modules: bool = True,
        **kwargs: Any,
    ) -> LorisForCausalLM:
        """LoRA as `FastLanguageModel.get_peft_model`; with ``target_modules=None`` the flags choose
        them: attention → q/k/v/o_proj, MLP → gate/up/down_proj."""
        if target_modules is None:
            target_modules = finetune_targets(
                finetune_vision_layers,
                finetune_language_layers,
                finetune_attention_modules,
                finetune_mlp_modules,
            )
        elif finetune_vision_layers:
            raise ValueError(_NO_VISION)
        return FastLanguageModel.get_peft_model(
            model, r, target_modules, lora_alpha, lora_dropout, bias, **kwargs
        )


_NO_VISION = (
    "finetune_vision_layers=True, but this is a text-only model: loris trains decoder-only language "
    "models (and the text tower of Gemma 3), which have no vision layers. Pass finetune_vision_layers=False."
)


def finetune_targets(vision: bool | None, language: bool, attention: bool, mlp: bool) -> list[str]:
    """The projections Unsloth's ``finetune_*`` flags select on a text model."""
    if vision:
        raise ValueError(_NO_VISION)
    if not language:
        raise ValueError(
            "finetune_language_layers=False leaves nothing to train on a text-only model; set it True "
            "(or pass target_modules explicitly)."
        )
    targets = (["q_proj", "k_proj", "v_proj", "o_proj"] if attention else []) + (
        ["gate_proj", "up_proj", "down_proj"] if mlp else []
    )
    if not targets:
        raise ValueError(
            "finetune_attention_modules=False and finetune_mlp_modules=False select no layers; set one "
            "of them True (or pass target_modules explicitly)."
        )
    return targets
