"""The generic path: any causal LM transformers can build, behind the interface loris' own decoder has.

A model type loris has no family for (Granite, OLMo 2, Cohere, SmolLM3, StableLM, ...) loads through
transformers' `AutoModelForCausalLM` (remote code only when the user passes ``trust_remote_code``).
`GenericCausalLM` registers that model's children under their own names, so every parameter keeps
its Hugging Face name: PEFT adapter keys, merged exports and original-weight lookups need no name
map beyond the identity (`GenericConfig.weight_names`). It offers what the trainers, generation and
exporters use on `LorisForCausalLM`: ``hidden_states`` / ``logits_from_hidden`` (chunked
cross-entropy, GRPO log-probs), ``lm_head`` / ``embed_tokens``, a forward taking ``labels``,
``num_items_in_batch`` and a ``kv_cache``, and ``gradient_checkpointing``, which switches
transformers' own per-layer checkpointing. LoRA goes into the ``nn.Linear`` layers whose names the
user targets (`inject_generic_lora`); 4-bit bases are loris' NF4 linears.

It is slower than a native family (no fused kernels inside the layers, eager decoding), which the
loader says once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loris.kernels.cross_entropy import linear_cross_entropy
from loris.lora import LoraConfig, LoraLinear
from loris.models.config import SUPPORTED_MODEL_TYPES, UnsupportedModelError
from loris.models.generic_config import INDEX, GenericConfig
from loris.models.lm_output import CausalLMOutput, causal_lm_output, softcap_logits
from loris.models.state import ModelState
from loris.quant import QuantizedLinear, quantized_linear

logger = logging.getLogger(__name__)

_noted: set[str] = set()


class GenericModelError(UnsupportedModelError):
    """A model loris can run neither natively nor through transformers' causal-LM classes."""


class GenericKVCache:
    """The engine's KV cache for a generic model: transformers' own `DynamicCache` behind loris'
    cache interface (``length``, ``copy_repeated``); the model's forward fills it."""

    def __init__(self, hf_config):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=hf_config)

    @property
    def length(self) -> int:
        return int(self.cache.get_seq_length())

    def copy_repeated(self, source: GenericKVCache, n: int) -> None:
        """Become ``source`` with every row repeated ``n`` times (row i → rows i*n .. i*n+n-1)."""
        if n > 1:
            source.cache.batch_repeat_interleave(n)
        self.cache = source.cache


class GenericCausalLM(nn.Module):
    """A transformers causal LM with `LorisForCausalLM`'s interface (see the module docstring)."""

    def __init__(self, hf_model: nn.Module, cfg: GenericConfig):
        super().__init__()
        if hf_model.get_output_embeddings() is not getattr(hf_model, "lm_head", None):
            raise GenericModelError(
                f"{type(hf_model).__name__}'s output layer is not called lm_head; loris' generic path "
                "needs the usual layout (model body + lm_head)."
            )
        if any(True for _ in hf_model.named_parameters(recurse=False)):
            raise GenericModelError(f"{type(hf_model).__name__} holds parameters outside its submodules")
        self.config = cfg
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        self.__dict__["hf_model"] = hf_model  # not a submodule: its children are registered above
        self.__dict__["_checkpointing"] = None
        self.head_is_linear = True  # logits = scale * lm_head(hidden_states), checked on load
        self.state = ModelState()  # what the face and the trainers know about it (loris.models.state)

    # ---- what loris reads of a model ---------------------------------------------------------

    @property
    def embed_tokens(self) -> nn.Module:
        return self.hf_model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def train(self, mode: bool = True) -> GenericCausalLM:
        super().train(mode)
        self.hf_model.training = mode
        return self

    @property
    def gradient_checkpointing(self):
        """None, or the mode (True / "offload") of transformers' per-layer checkpointing."""
        return self.__dict__["_checkpointing"]

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, mode) -> None:
        # The trainer loop assigns loris' per-block function (`make_checkpoint_fn(True)`); here any
        # truthy value other than "offload" means plain recompute.
        if not mode:
            if self.__dict__["_checkpointing"] is not None:
                self.hf_model.gradient_checkpointing_disable()
            self.__dict__["_checkpointing"] = None
            return
        offload = mode in ("offload", "unsloth") and self.device.type == "cuda"
        if not getattr(self.hf_model, "supports_gradient_checkpointing", False):
            raise GenericModelError(
                f"{type(self.hf_model).__name__} does not support gradient checkpointing in transformers; "
                "pass use_gradient_checkpointing=False."
            )
        self.hf_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}, offload=offload
        )
        self.__dict__["_checkpointing"] = "offload" if offload else True

    # ---- forward -----------------------------------------------------------------------------

    def _body(self, input_ids, attention_mask, position_ids, kv_cache, inputs_embeds):
        cache = kv_cache.cache if kv_cache is not None else None
        return self.hf_model.base_model(
            input_ids=input_ids if inputs_embeds is None else None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
            inputs_embeds=inputs_embeds,
        ).last_hidden_state

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: GenericKVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (batch, seq, hidden); the logits themselves for a model whose
        head is not a plain scaled linear (then `logits_from_hidden` passes them through)."""
        if not self.head_is_linear:
            cache = kv_cache.cache if kv_cache is not None else None
            return self.hf_model(
                input_ids=input_ids if inputs_embeds is None else None,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
                inputs_embeds=inputs_embeds,
            ).logits
        return self._body(input_ids, attention_mask, position_ids, kv_cache, inputs_embeds)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        if not self.head_is_linear:
            return h
        logits = self.lm_head(h)
        if self.config.logit_scale != 1.0:
            logits = logits * self.config.logit_scale
        return softcap_logits(logits, self.config.final_logit_softcap)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        kv_cache: GenericKVCache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool | None = None,
        logits_to_keep: int = 0,
        **_: object,
    ) -> CausalLMOutput:
        """As `LorisForCausalLM.forward`: shifted labels, -100 ignored, chunked loss while training."""
        h = self.hidden_states(input_ids, attention_mask, position_ids, kv_cache, inputs_embeds)
        return causal_lm_output(
            h,
            labels,
            lm_loss=self._lm_loss,
            logits_from_hidden=self.logits_from_hidden,
            training=self.training,
            num_items_in_batch=num_items_in_batch,
            return_logits=return_logits,
            logits_to_keep=logits_to_keep,
        )

    def _lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
        if not self.head_is_linear:
            return F.cross_entropy(hidden.float(), labels, ignore_index=-100, reduction=reduction)
        scale = self.config.logit_scale
        return linear_cross_entropy(
            hidden * scale if scale != 1.0 else hidden,
            self.lm_head.weight,
            labels,
            softcap=self.config.final_logit_softcap,
            reduction=reduction,
        )


# ---------------------------------------------------------------------------------- loading


def note_generic(model_type: str) -> None:
    """Say once per model type that it runs on the generic path, and what that means."""
    if model_type in _noted:
        return
    _noted.add(model_type)
    logger.warning(
        "loris: model_type=%r has no native loris family; it runs on the generic path (transformers' own "
        "modules with loris' LoRA, trainers and exports): slower than a native family, same file formats.",
        model_type,
    )


def load_generic(
    folder: Path,
    raw: dict[str, Any],
    *,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None,
    trust_remote_code: bool = False,
    token: str | None = None,
    model_class: type[GenericCausalLM] | None = None,
) -> GenericCausalLM:
    """Build ``folder``'s model with transformers, quantize its linears if asked, wrap it (as
    ``model_class``: the face's subclass, or `GenericCausalLM`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = raw.get("model_type")
    if raw.get("quantization_config") is not None:
        raise GenericModelError(
            f"{folder} is a pre-quantized {model_type!r} checkpoint; loris' generic path loads 16-bit "
            "checkpoints only: load the 16-bit model with load_in_4bit=True."
        )
    try:
        hf_cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code, token=token)
    except (ValueError, KeyError) as e:
        hint = (
            ""
            if trust_remote_code
            else " If the repository ships its own modeling code you trust, pass trust_remote_code=True."
        )
        raise GenericModelError(
            f"model_type={model_type!r} is neither a loris family nor known to this transformers.{hint} ({e})"
        ) from e
    if not _is_causal_lm(hf_cfg, model_type):
        native = ", ".join(t for t in SUPPORTED_MODEL_TYPES if t != "gemma3")
        raise GenericModelError(
            f"model_type={model_type!r} is not a causal (decoder-only) language model in transformers, so "
            f"loris cannot train it: it runs its native families ({native}) and, more slowly, any model "
            "transformers' AutoModelForCausalLM builds."
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise FileNotFoundError(
            f"{folder} has config.json but no *.safetensors or pytorch_model*.bin weights."
        )
    note_generic(str(model_type))
    load_device = "cpu" if quantization is not None else device
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(folder),
            config=hf_cfg,
            dtype=dtype,
            device_map=str(load_device),
            trust_remote_code=trust_remote_code,
            token=token,
            attn_implementation="sdpa",
        )
    except ValueError as e:
        raise GenericModelError(f"transformers cannot build a causal LM from {folder}: {e}") from e
    hf_model.requires_grad_(False)
    hf_model.config.use_cache = False
    names = [n for n, _ in hf_model.named_parameters(remove_duplicate=False)]
    cfg = GenericConfig.from_hf(hf_model.config, {k: v for k, v in raw.items()}, names)
    if quantization is not None:
        _quantize_linears(hf_model, quantization, device)
    hf_model.to(device)
    model = (model_class or GenericCausalLM)(hf_model, cfg)
    model.head_is_linear = _head_is_linear(model)
    return model.eval()


def _is_causal_lm(hf_cfg, model_type) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    remote = getattr(hf_cfg, "auto_map", None) or {}
    return hf_cfg.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in remote


def _quantize_linears(hf_model: nn.Module, mode: str, device: torch.device) -> None:
    """Every ``nn.Linear`` but the LM head becomes a loris NF4/int8 linear on ``device``, one at a
    time, so the device never holds the 16-bit weights."""
    head = hf_model.get_output_embeddings()
    for name, module in list(hf_model.named_modules()):
        if type(module) is not nn.Linear or module is head:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = hf_model.get_submodule(parent_name) if parent_name else hf_model
        bias = module.bias.detach().to(device) if module.bias is not None else None
        setattr(parent, attr, quantized_linear(module.weight.detach().to(device), bias, mode))


@torch.no_grad()
def _head_is_linear(model: GenericCausalLM) -> bool:
    """Whether transformers' logits are ``scale * lm_head(hidden)`` (soft-capped where configured),
    checked on a few tokens: then the loss runs chunked from hidden states; otherwise from the logits."""
    if model.lm_head.bias is not None:
        return False
    vocab = model.config.vocab_size
    ids = torch.arange(min(8, vocab), device=model.device)[None] % vocab
    was = model.training
    model.eval()
    try:
        reference = model.hf_model(input_ids=ids).logits.float()
        ours = model.logits_from_hidden(model._body(ids, None, None, None, None)).float()
    finally:
        model.train(was)
    ok = torch.allclose(ours, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()) + 1e-5)
    if not ok:
        logger.warning(
            "loris: %s's logits are not a scaled linear of its hidden states; the loss is computed from "
            "full logits (more memory).",
            model.config.model_type,
        )
    return ok


# ---------------------------------------------------------------------------------- LoRA


def linear_names(model: GenericCausalLM) -> list[str]:
    """Short names of the targetable linear layers (the LM head excepted), in model order."""
    out: dict[str, None] = {}
    for name, module in model.named_modules():
        if name == "lm_head" or not isinstance(module, (nn.Linear, QuantizedLinear, LoraLinear)):
            continue
        if isinstance(module, nn.Linear) and ".base" in name:
            continue
        out[name.rsplit(".", 1)[-1]] = None
    return list(out)


def _layer_index(name: str) -> int | None:
    m = INDEX.search(name)
    return int(m.group(0)) if m else None


def inject_generic_lora(model: GenericCausalLM, cfg: LoraConfig) -> None:
    """`LoraLinear` in every targeted linear slot (matched by short name, as PEFT matches), then
    everything else frozen; ``modules_to_save`` as in `loris.lora.inject_lora`."""
    from loris.lora import _make_trainable_module

    layers = set(cfg.layers_to_transform) if cfg.layers_to_transform is not None else None
    targets = set(cfg.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    slots = []
    for name, module in model.named_modules():
        if name == "lm_head" or not isinstance(module, (nn.Linear, QuantizedLinear)):
            continue
        if name.rsplit(".", 1)[-1] not in targets:
            continue
        if layers is not None and _layer_index(name) not in layers:
            continue
        slots.append(name)
    if not slots:
        raise ValueError(
            f"target_modules {sorted(targets)} match no linear layer of this {model.config.model_type} model; "
            f"its linear layers are: {', '.join(linear_names(model))}"
        )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.random_state)
    try:
        for name in slots:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            lora = LoraLinear(getattr(parent, attr), cfg.r, cfg.scaling, cfg.lora_dropout)
            lora.reset_parameters(cfg.init_lora_weights)
            setattr(parent, attr, lora)
    finally:
        torch.random.set_rng_state(generator_state)
    for name in cfg.modules_to_save or []:
        _make_trainable_module(model, name)


def default_targets(model: GenericCausalLM) -> list[str]:
    """``target_modules=None``: loris' usual seven where the model has them, else every linear."""
    from loris.lora import PROJECTIONS

    names = linear_names(model)
    usual = [p for p in PROJECTIONS if p in names]
    return usual or names
