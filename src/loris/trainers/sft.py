"""Supervised fine-tuning: `SFTConfig` and `SFTTrainer`, with TRL's names and Unsloth's old kwargs.

    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=ds,
                         args=SFTConfig(per_device_train_batch_size=2, max_steps=60, ...))
    trainer.train()

The dataset is tokenized when the trainer is built (see `loris.data.sft.prepare_dataset`), so
``trainer.train_dataset`` holds ``input_ids`` that ``train_on_responses_only(trainer)`` can mask.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loris.data.sft import (
    ModelColumnsCollator,
    SFTCollator,
    TokenizeSpec,
    pack_dataset,
    prepare_dataset,
)
from loris.models.state import model_state
from loris.trainers.config import TrainingConfig
from loris.trainers.loop import Trainer, TrainerCallback

DEFAULT_MAX_LENGTH = 1024  # TRL's SFTConfig default, used when neither config nor model gives one
_DATASET_KWARGS = {"skip_prepare_dataset", "add_special_tokens", "append_concat_token"}


@dataclass
class SFTConfig(TrainingConfig):
    """`TrainingConfig` plus TRL's `SFTConfig` fields (TRL's defaults: lr 2e-5, logging every 10 steps).

    ``max_length`` (TRL's current name) and ``max_seq_length`` (its old one, still in Unsloth
    notebooks) are the same setting; give either. Left unset it is the model's ``max_seq_length``
    (from `FastLanguageModel.from_pretrained`), else 1024. ``completion_only_loss`` applies to
    prompt/completion datasets; ``assistant_only_loss`` is accepted but response-only masking is done
    by ``loris.chat_templates.train_on_responses_only(trainer)``. ``padding_free`` is accepted and
    trains exactly as padded batches do (same numbers). ``packing`` greedily concatenates whole
    examples into rows of up to ``max_length`` tokens, with ``position_ids`` restarting per example
    and no label predicting across a boundary; the model keeps attention inside each example (it
    reads the restarts as boundaries), so packed training equals unpacked training, minus the padding.
    Samples longer than ``max_length`` are truncated, with one warning giving how many.
    """

    learning_rate: float = 2e-5
    logging_steps: float = 10
    dataset_text_field: str = "text"
    max_length: int | None = None
    max_seq_length: int | None = None
    packing: bool = False
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    dataset_num_proc: int | None = None
    completion_only_loss: bool | None = None
    assistant_only_loss: bool = False
    eos_token: str | None = None
    pad_token: str | None = None
    dataset_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            self.max_length is not None
            and self.max_seq_length is not None
            and self.max_length != self.max_seq_length
        ):
            raise ValueError(
                f"max_length={self.max_length} and max_seq_length={self.max_seq_length} disagree: they are "
                "the same setting (TRL renamed it); give one."
            )
        if self.max_length is None:
            self.max_length = self.max_seq_length
        self.max_seq_length = self.max_length
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length={self.max_length}: need at least 2 tokens to train on.")
        unknown = set(self.dataset_kwargs or {}) - _DATASET_KWARGS
        if unknown:
            raise ValueError(
                f"dataset_kwargs {sorted(unknown)} are not understood; known: {sorted(_DATASET_KWARGS)}."
            )


# Old SFTTrainer keyword arguments (TRL < 0.12, still used by Unsloth notebooks) that live in the config now.
_CONFIG_KWARGS = (
    "dataset_text_field",
    "max_seq_length",
    "max_length",
    "packing",
    "padding_free",
    "dataset_num_proc",
    "dataset_kwargs",
    "eos_token",
)
_IGNORED_KWARGS = ("compute_metrics", "preprocess_logits_for_metrics", "compute_loss_func", "model_init")


class SFTTrainer(Trainer):
    """TRL's `SFTTrainer` over loris' loop: tokenizes (or packs) the dataset, then trains.

    Positional order follows TRL: ``(model, args, data_collator, train_dataset, eval_dataset,
    processing_class)``. ``tokenizer=`` is the old name of ``processing_class``; ``dataset_text_field=``,
    ``max_seq_length=``, ``packing=`` ... (TRL's old keywords) override the matching config fields.
    A user ``data_collator`` (``DataCollatorForSeq2Seq``, ``DataCollatorForLanguageModeling``) is called
    on the model columns of each row; without one, `SFTCollator` right-pads and masks padding by the
    attention mask.
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingConfig | None = None,
        data_collator: Callable[[list[dict]], Any] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        tokenizer: Any = None,
        formatting_func: Callable[[dict], str] | None = None,
        callbacks: Sequence[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if peft_config is not None:
            raise ValueError(
                "peft_config is not used by loris: add adapters with FastLanguageModel.get_peft_model(model, ...) "
                "before building the trainer."
            )
        args = _sft_config(args, kwargs)
        tok = processing_class if processing_class is not None else tokenizer
        state = model_state(model)
        if tok is None:
            tok = state.tokenizer
        if args.max_length is None:
            args.max_length = args.max_seq_length = state.max_seq_length or DEFAULT_MAX_LENGTH
        if args.assistant_only_loss:
            warnings.warn(
                "assistant_only_loss=True is not applied by SFTTrainer: call "
                "loris.chat_templates.train_on_responses_only(trainer) to mask everything but the answers.",
                stacklevel=2,
            )
        if args.padding_free:
            warnings.warn(
                "padding_free=True trains as padded batches for now (same loss and gradients; per-document "
                "attention for unpadded batches is not implemented yet).",
                stacklevel=2,
            )
        self.processing_class = tok
        self.formatting_func = formatting_func
        if data_collator is None:
            pad_id = getattr(tok, "pad_token_id", None)
            if args.pad_token is not None and tok is not None:
                pad_id = tok.convert_tokens_to_ids(args.pad_token)
            data_collator = SFTCollator(pad_token_id=pad_id or 0, pad_to_multiple_of=args.pad_to_multiple_of)
        elif args.remove_unused_columns:
            data_collator = ModelColumnsCollator(data_collator)
        super().__init__(
            model,
            args,
            train_dataset=prepare_sft_data(train_dataset, tok, args, formatting_func),
            eval_dataset=prepare_sft_data(eval_dataset, tok, args, formatting_func),
            data_collator=data_collator,
            callbacks=callbacks,
            optimizers=optimizers,
        )

    @property
    def tokenizer(self) -> Any:
        """TRL's old name for ``processing_class``."""
        return self.processing_class

    def train(self, resume_from_checkpoint: bool | str | None = None):  # noqa: D102 - see Trainer.train
        tok = self.processing_class
        if tok is not None and getattr(tok, "padding_side", "right") != "right":
            tok.padding_side = "right"  # user collators pad with the tokenizer; training pads right
        return super().train(resume_from_checkpoint)


def _sft_config(args: TrainingConfig | None, kwargs: dict[str, Any]) -> SFTConfig:
    """A private copy of ``args`` as an `SFTConfig`, with TRL's old trainer keywords moved into it."""
    moved = {k: kwargs.pop(k) for k in _CONFIG_KWARGS if k in kwargs}
    for name in _IGNORED_KWARGS:
        if kwargs.pop(name, None) is not None:
            warnings.warn(f"SFTTrainer ignores {name}= (not supported by loris).", stacklevel=3)
    if kwargs:
        raise TypeError(
            f"SFTTrainer got unexpected arguments {sorted(kwargs)}; training settings go in args=SFTConfig(...)."
        )
    if args is None:
        args = SFTConfig()
    elif not isinstance(args, SFTConfig):
        if not isinstance(args, TrainingConfig):
            raise TypeError(
                f"args must be an SFTConfig (or TrainingConfig), got {type(args).__name__}. transformers' "
                "TrainingArguments take the same field names: SFTConfig(**your_arguments)."
            )
        base = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingConfig)}
        args = SFTConfig(**base)
    length = moved.pop("max_length", None) or moved.pop("max_seq_length", None)
    moved.pop("max_seq_length", None)
    if length is not None:
        moved["max_length"] = moved["max_seq_length"] = length
    return dataclasses.replace(args, **moved)


def prepare_sft_data(
    data: Any, tokenizer: Any, args: SFTConfig, formatting_func: Callable | None = None
) -> Any:
    """Tokenize (and with ``args.packing``, pack) a dataset as `SFTTrainer` does; None stays None."""
    if data is None:
        return None
    options = args.dataset_kwargs or {}
    if options.get("skip_prepare_dataset"):
        return data
    spec = TokenizeSpec(
        max_length=args.max_length,
        dataset_text_field=args.dataset_text_field,
        eos_token=args.eos_token or getattr(tokenizer, "eos_token", None),
        add_special_tokens=options.get("add_special_tokens"),
        completion_only_loss=args.completion_only_loss,
        num_proc=args.dataset_num_proc,
    )
    data = prepare_dataset(data, tokenizer, spec, formatting_func)
    if args.packing:
        data = pack_dataset(data, args.max_length)
    return data


@dataclass
class UnslothTrainingArguments(SFTConfig):
    """Unsloth's `UnslothTrainingArguments`: `SFTConfig` with Unsloth's defaults for unset fields
    (batch 4, accumulation 2, lr 5e-5, weight decay 0.001, seed 3407, adamw_8bit, log every step).

    ``embedding_learning_rate`` gives ``embed_tokens``/``lm_head`` (``modules_to_save``) their own
    learning rate, as Unsloth's continued-pretraining notebooks use (typically lr / 10).
    """

    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 2
    learning_rate: float = 5e-5
    weight_decay: float = 0.001
    seed: int = 3407
    optim: str = "adamw_8bit"
    logging_steps: float = 1


class UnslothTrainer(SFTTrainer):
    """Unsloth's `UnslothTrainer`: an `SFTTrainer`; the embedding learning rate comes from the config."""
