"""The model object users hold: the plain decoder plus the methods Unsloth's and PEFT's users call.

`LorisModel` is `LorisForCausalLM` with ``save_pretrained*``, ``push_to_hub*``, ``generate``,
``fast_generate``, ``save_lora`` / ``load_lora`` and friends; `FastLanguageModel.from_pretrained` asks
the loader for it. Each method is a thin call into `loris.export`, `loris.generation` or
`loris.peft_format`, which take any loris model (plain or face) and read what they need from its
declared `loris.models.state.ModelState`. The loose attributes users and notebooks read or set
(``model.tokenizer``, ``model.max_seq_length``, ``model.peft_config``, ...) are properties over
that state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loris.export import pipeline
from loris.models.decoder import LorisForCausalLM
from loris.models.generic import GenericCausalLM


def _state_property(field: str, doc: str) -> property:
    def get(self) -> Any:
        return getattr(self.state, field)

    def set_(self, value: Any) -> None:
        setattr(self.state, field, value)

    return property(get, set_, doc=doc)


class FaceMethods:
    """The user-facing methods and state properties (see the module docstring), for any loris model
    class: the native decoder (`LorisModel`) or a transformers model on the generic path
    (`GenericModel`)."""

    tokenizer = _state_property("tokenizer", "The tokenizer loaded with the model (or set later).")
    max_seq_length = _state_property("max_seq_length", "The sequence length training and generation use.")
    name_or_path = _state_property("name_or_path", "What the model was loaded from (Hub id or path).")
    source_folder = _state_property("source_folder", "The folder holding the original files.")
    source_gguf_file = _state_property("source_gguf_file", "The .gguf file it was loaded from, if any.")
    peft_config = _state_property("peft_config", "The LoRA settings (None before get_peft_model).")

    # ---- adapters (see loris.lora / loris.peft_format) -------------------------------------------

    def save_pretrained(self, save_directory, tokenizer=None, **_: object):
        """Save the LoRA adapter in PEFT's format (and the tokenizer, if given)."""
        (adapter,) = pipeline.save(self, tokenizer, "adapter", save_directory)
        return adapter.path

    def save_pretrained_merged(
        self,
        save_directory,
        tokenizer=None,
        save_method: str = "merged_16bit",
        push_to_hub: bool = False,
        token=None,
        max_shard_size="5GB",
        private=None,
        validate: bool = False,
        **_: object,
    ):
        """Unsloth's name: LoRA merged into safetensors; see `loris.export.hf`. ``save_method``:
        ``merged_16bit`` (16-bit always: the source's float16/bfloat16, else bfloat16),
        ``merged_32bit`` (float32, only when asked for), ``merged_4bit_forced`` (NF4) or ``lora``.

        With ``push_to_hub=True``, ``save_directory`` is the Hub repo id (as in Unsloth). ``validate=True``
        reloads what was written and compares logits (`loris.export.validate`), raising on a mismatch."""
        if push_to_hub:
            return self.push_to_hub_merged(
                save_directory,
                tokenizer,
                save_method,
                token=token,
                private=private,
                max_shard_size=max_shard_size,
                validate=validate,
            )
        (merged,) = pipeline.save(
            self, tokenizer, save_method, save_directory, validate=validate, max_shard_size=max_shard_size
        )
        return merged.path

    def save_pretrained_gguf(
        self,
        save_directory,
        tokenizer=None,
        quantization_method="fast_quantized",
        first_conversion=None,
        backend: str = "loris",
        validate: bool = False,
        quantization_type: str | list[str] | None = None,
        **_: object,
    ):
        """Unsloth's name: GGUF file(s) ``<name>.<QUANT>.gguf`` (+ Modelfile); see `loris.export.gguf`.

        ``quantization_type`` is the spelling of Unsloth's Gemma-3 notebooks; it means ``quantization_method``.

        ``backend="llama.cpp"`` quantizes with llama-cpp-python's quantizer instead of loris' own.
        ``validate=True`` checks each file in llama.cpp and the Modelfile (`loris.export.validate`)."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if quantization_type is not None:
            if quantization_method not in ("fast_quantized", quantization_type):
                raise ValueError(
                    f"quantization_method={quantization_method!r} and quantization_type={quantization_type!r} "
                    "disagree: pass one of them"
                )
            quantization_method = quantization_type
        written = pipeline.save(
            self,
            tokenizer,
            "gguf",
            save_directory,
            validate=validate,
            quantization_method=quantization_method,
            first_conversion=first_conversion,
            backend=backend,
        )
        return [w.path for w in written if w.kind == "gguf"]

    # ---- Hub uploads (see loris.export.pipeline) ------------------------------------------------------

    def push_to_hub(
        self, repo_id, tokenizer=None, token=None, private=None, commit_message=None, **_: object
    ):
        """Upload the LoRA adapter (PEFT format) with a model card; ``token`` defaults to HF_TOKEN / login."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        return pipeline.push(
            self, tokenizer, "adapter", repo_id, token=token, private=private, commit_message=commit_message
        )

    def push_to_hub_merged(
        self,
        repo_id,
        tokenizer=None,
        save_method: str = "merged_16bit",
        token=None,
        private=None,
        commit_message=None,
        max_shard_size="5GB",
        validate: bool = False,
        **_: object,
    ):
        """Unsloth's name: upload what ``save_pretrained_merged`` writes, with a model card
        (``validate=True``: checked before the upload, see `loris.export.validate`)."""
        return pipeline.push(
            self,
            tokenizer if tokenizer is not None else self.tokenizer,
            save_method,
            repo_id,
            token=token,
            private=private,
            commit_message=commit_message,
            max_shard_size=max_shard_size,
            validate=validate,
        )

    def push_to_hub_gguf(
        self,
        repo_id,
        tokenizer=None,
        quantization_method="fast_quantized",
        token=None,
        private=None,
        commit_message=None,
        validate: bool = False,
        **_: object,
    ):
        """Unsloth's name: upload ``<name>.<QUANT>.gguf`` file(s), the Modelfile and a model card
        (``validate=True``: checked before the upload, see `loris.export.validate`)."""
        return pipeline.push(
            self,
            tokenizer if tokenizer is not None else self.tokenizer,
            "gguf",
            repo_id,
            quantization_method=quantization_method,
            token=token,
            private=private,
            commit_message=commit_message,
            validate=validate,
        )

    def disable_adapter(self):
        """Context manager: run the base model alone (PEFT's name)."""
        from loris.lora import adapters_disabled

        return adapters_disabled(self)

    def print_trainable_parameters(self) -> None:
        from loris.lora import count_parameters

        trainable, total = count_parameters(self)
        print(
            f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
        )

    def num_parameters(self, trainable_only: bool = False) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        seed: int | None = None,
        streamer=None,
        **_: object,
    ) -> torch.Tensor:
        """transformers-style ``generate``: returns prompt + new tokens (batch, length)."""
        from loris.generation.generate import generate
        from loris.generation.sampling import SamplingConfig

        tok = self.tokenizer
        if eos_token_id is None:
            eos_token_id = self.config.eos_token_id if tok is None else tok.eos_token_id
        if pad_token_id is None and tok is not None:
            pad_token_id = tok.pad_token_id
        sampling = SamplingConfig(do_sample, temperature, top_k, top_p, min_p, repetition_penalty)
        on_tokens = None
        if streamer is not None:
            streamer.put(input_ids.cpu())
            on_tokens = lambda t: streamer.put(t.cpu())  # noqa: E731
        was_training = self.training
        self.eval()
        try:
            out = generate(
                self,
                input_ids,
                attention_mask,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
                seed=seed,
                on_tokens=on_tokens,
            )
        finally:
            self.train(was_training)
        if streamer is not None:
            streamer.end()
        return out

    # ---- fast generation (vLLM-style; see loris.generation) -------------------------------------

    def fast_generate(self, prompts, sampling_params=None, lora_request=None, **kwargs):
        """vLLM's ``LLM.generate``: texts or token id lists → outputs with ``.outputs[i].text`` /
        ``.token_ids``. ``lora_request=None`` uses the base weights, as Unsloth + vLLM do; pass
        ``model.load_lora(folder)``, or ``"live"`` for the in-memory adapter."""
        from loris.generation.fast import fast_generate

        return fast_generate(self, prompts, sampling_params, lora_request, **kwargs)

    def load_lora(self, folder, load_tensors: bool = False):
        """Unsloth's name: a `LoRARequest` for a saved adapter folder, to pass to `fast_generate`."""
        from loris.generation.params import LoRARequest

        if not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{folder} has no adapter_config.json: save it with model.save_lora")
        return LoRARequest(lora_name=str(folder), lora_int_id=1, lora_path=str(folder))

    def save_lora(self, folder):
        """Unsloth's name for saving the adapter (PEFT format)."""
        return self.save_pretrained(folder)


class LorisModel(FaceMethods, LorisForCausalLM):
    """`LorisForCausalLM` with the user-facing methods."""


class GenericModel(FaceMethods, GenericCausalLM):
    """A model on the generic path (`loris.models.generic`) with the user-facing methods."""
