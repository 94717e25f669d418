"""What DPO, ORPO, CPO/SimPO and KTO share: their config fields, dataset preparation, the reference
policy, precomputed reference log-probs, and TRL-named metrics merged into the loop's log lines.

Each trainer subclasses `PreferenceTrainer` and writes `compute_loss` from the log-probs that
`preference_ref` computes; the shared loop (`loop.Trainer`) does the rest (optimizer, accumulation,
progress, JSONL, plots, checkpoints and exact resume), as for SFT and GRPO.

Accumulation: ``count_loss_items`` is the examples (pairs, or rows for KTO) of a micro-batch, and a
micro-batch's loss is its per-example sum (or, for losses TRL averages per micro-batch, that mean
times the micro-batch's share of the step's examples) divided by the step's total. That is TRL's
mean-per-micro-batch / gradient_accumulation_steps whenever micro-batches are equal in size, and it
keeps batch 1 × accumulation 8 equal to batch 8 × accumulation 1 when the last one is short.

Many ranks (torchrun, DDP): each rank gets its contiguous slice of every global micro-batch's pairs
(KTO: rows, each with its fixed KL completion), the step's example count is summed over ranks
(`Ranks.loss_normaliser`, as SFT's token count), so the gradient is that of the mean over the global
step's examples; metrics are recorded as (sum, count) and summed over ranks per micro-batch before
they are logged, and KTO's KL estimate is the mean over the global micro-batch. The reference pass
(live, or precomputed in full on every rank before training) runs on each rank's own rows.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loris.data._rows import column_names
from loris.data.preference import (
    PreferenceCollator,
    PreferenceSpec,
    UnpairedCollator,
    add_columns,
    add_kl_completions,
    tokenize_pairs,
    tokenize_unpaired,
)
from loris.distributed import env
from loris.lora import lora_modules
from loris.models.state import model_state
from loris.trainers.config import TrainingConfig
from loris.trainers.loop import Trainer, TrainerCallback
from loris.trainers.preference_ref import ReferencePolicy, scored_token_logps


@dataclass
class PreferenceConfig(TrainingConfig):
    """Fields every preference config has, with TRL 1.15's defaults (lr 1e-6, log every 10 steps,
    beta 0.1, max_length 1024, dropout disabled). ``bf16`` and ``gradient_checkpointing`` keep the
    loop's defaults (off) as in `SFTConfig`/`GRPOConfig`; turn them on as the notebooks do.

    ``max_prompt_length`` (older TRL, Unsloth's notebooks) keeps a prompt's last tokens and
    ``max_completion_length`` a completion's first; ``max_length`` then cuts prompt+completion from
    the end (TRL's ``truncation_mode="keep_start"``). ``logprob_chunk_size``: tokens per LM-head chunk.
    ``padding_free`` runs the policy and the reference on each micro-batch's real tokens only: all its
    sequences (chosen and rejected) packed into one row, position ids restarting per sequence and
    attention kept inside each, as SFT's packing does; the numbers are the padded batches' (TRL 1.15
    accepts the field but trains padded). It pays when lengths differ a lot; attention then runs
    over the packed row with a block-diagonal mask, so it stays off by default. ``padding_value``,
    ``label_pad_token_id``, ``is_encoder_decoder``, ``generate_during_eval`` and ``model_init_kwargs``
    are accepted for old notebooks and change nothing."""

    learning_rate: float = 1e-6
    logging_steps: float = 10
    beta: float = 0.1
    max_length: int | None = 1024
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    truncation_mode: str = "keep_start"
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    dataset_num_proc: int | None = None
    disable_dropout: bool = True
    logprob_chunk_size: int = 128
    padding_value: int | None = None
    label_pad_token_id: int = -100
    is_encoder_decoder: bool | None = None
    generate_during_eval: bool = False
    model_init_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta}: must be > 0.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length={self.max_length}: need at least 2 tokens.")
        if self.truncation_mode != "keep_start":
            raise ValueError(
                f"truncation_mode={self.truncation_mode!r}: only 'keep_start' is supported (TRL 1.15 "
                "deprecates 'keep_end'); use max_prompt_length to keep the end of long prompts."
            )
        if self.is_encoder_decoder:
            raise ValueError("is_encoder_decoder=True: loris trains decoder-only models.")
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size={self.logprob_chunk_size}: must be >= 1.")

    def data_spec(self) -> PreferenceSpec:
        return PreferenceSpec(
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            max_completion_length=self.max_completion_length,
            num_proc=self.dataset_num_proc,
        )


def config_with_kwargs(config_cls: type, args: Any, kwargs: dict[str, Any], trainer: str) -> Any:
    """A private copy of ``args`` as ``config_cls``, with old trainer keywords (``beta=``,
    ``max_length=``, ``max_prompt_length=`` ... as Unsloth's DPO notebook passes them) moved in."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    moved = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    for name in ("compute_metrics", "preprocess_logits_for_metrics", "model_init", "peft_config"):
        if kwargs.pop(name, None) is not None:
            if name == "peft_config":
                raise ValueError(
                    "peft_config is not used by loris: add adapters with "
                    "FastLanguageModel.get_peft_model(model, ...) before building the trainer."
                )
            warnings.warn(f"{trainer} ignores {name}= (not supported by loris).", stacklevel=3)
    if kwargs:
        raise TypeError(
            f"{trainer} got unexpected arguments {sorted(kwargs)}; settings go in args={config_cls.__name__}(...)."
        )
    if args is None:
        args = config_cls()
    elif not isinstance(args, config_cls):
        if not isinstance(args, TrainingConfig):
            raise TypeError(
                f"args must be a {config_cls.__name__}, got {type(args).__name__}. transformers' "
                f"TrainingArguments take the same field names: {config_cls.__name__}(**your_arguments)."
            )
        base = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name in names}
        args = config_cls(**base)
    return dataclasses.replace(args, **moved) if moved else dataclasses.replace(args)


class PreferenceTrainer(Trainer):
    """Shared machinery; see the module docstring. Subclasses set ``config_class``, ``paired``,
    ``uses_reference`` and write ``compute_loss`` (and ``_precompute_row`` if they use a reference)."""

    config_class: type = PreferenceConfig
    paired = True
    uses_reference = True

    def __init__(
        self,
        model: nn.Module,
        ref_model: nn.Module | None = None,
        args: PreferenceConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        callbacks: Sequence[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        *,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        args = config_with_kwargs(self.config_class, args, kwargs, name)
        tok = processing_class if processing_class is not None else tokenizer
        if tok is None:
            tok = model_state(model).tokenizer
        if tok is None:
            raise ValueError(f"{name} needs the tokenizer: pass processing_class=tokenizer (or tokenizer=).")
        self.processing_class = tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("The tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token.")
        self.pad_token_id = int(pad)
        if data_collator is None:
            data_collator = self._default_collator(args)
        if args.disable_dropout:
            for _, m in lora_modules(model):
                m.dropout = 0.0
        super().__init__(
            model,
            args,
            train_dataset=self._prepare(train_dataset, args),
            eval_dataset=self._prepare(eval_dataset, args),
            data_collator=data_collator,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._metrics: dict[str, list[tuple[float, float]]] = {}  # see record()
        self.reference: ReferencePolicy | None = None
        if self.uses_reference:
            precompute = getattr(args, "precompute_ref_log_probs", False)
            self.reference = ReferencePolicy(model, ref_model, needed=not precompute)
            if precompute:
                self.train_dataset = self.precompute_reference(self.train_dataset)
                if self.eval_dataset is not None:
                    self.eval_dataset = self.precompute_reference(self.eval_dataset)
        elif ref_model is not None:
            warnings.warn(f"{name} uses no reference model: ref_model is ignored.", stacklevel=2)

    @property
    def tokenizer(self) -> Any:
        """TRL's old name for ``processing_class``."""
        return self.processing_class

    # ---------------------------------------------------------------------------------------- data
    def _default_collator(self, args: PreferenceConfig) -> Any:
        if self.paired:
            return PreferenceCollator(self.pad_token_id, args.max_length, args.pad_to_multiple_of)
        return UnpairedCollator(
            self.pad_token_id, args.max_length, args.pad_to_multiple_of, with_kl=self._with_kl(args)
        )

    def _with_kl(self, args: Any) -> bool:
        return False

    def _prepare(self, data: Any, args: PreferenceConfig) -> Any:
        if data is None:
            return None
        if self.paired:
            return tokenize_pairs(data, self.processing_class, args.data_spec(), type(self).__name__)
        data = tokenize_unpaired(data, self.processing_class, args.data_spec(), type(self).__name__)
        if self._with_kl(args) and "KL_completion_ids" not in column_names(data):
            # pairs within runs of the global micro-batch's size, so N ranks × batch b pair (and
            # train) exactly as 1 process × batch N·b; one process: TRL's per-device batch
            world = env.launch_info().world_size
            data = add_kl_completions(data, args.per_device_train_batch_size * world)
        return data

    def count_loss_items(self, batch: dict[str, Any]) -> int:
        rows = int(batch["input_ids"].shape[0])
        return rows // 2 if self.paired else rows

    # ------------------------------------------------------------------------------- log-probs
    def token_logps(
        self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, score: torch.Tensor
    ) -> torch.Tensor:
        """The policy's per-token log-probs of each row's scored tokens (`scored_token_logps`),
        padded or padding-free as ``args.padding_free`` says."""
        args = self.args
        return scored_token_logps(
            model, ids, mask, score, chunk_size=args.logprob_chunk_size, padding_free=args.padding_free
        )

    def reference_logps(self, ids: torch.Tensor, mask: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Summed reference log-probs of each row's scored tokens."""
        args = self.args
        token = self.reference.token_logps(ids, mask, score, args.logprob_chunk_size, args.padding_free)
        return token.sum(-1)

    def _global_totals(self, *values: float) -> list[float]:
        """``values`` summed over every rank's share of the current micro-batch (a collective: every
        rank calls it at the same point; one process: the values)."""
        if self._ranks.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=next(self.model.parameters()).device)
        return self._ranks.total(t).tolist()

    @torch.no_grad()
    def precompute_reference(self, data: Any) -> Any:
        """Add the reference log-probs as columns, once, in dataset order (TRL's
        ``precompute_ref_log_probs``); the reference model is then not run while training."""
        bs = getattr(self.args, "precompute_ref_batch_size", None) or self.args.per_device_train_batch_size
        device = next(self.model.parameters()).device
        columns: dict[str, list[float]] = {}
        for start in range(0, len(data), bs):
            rows = [data[i] for i in range(start, min(start + bs, len(data)))]
            batch = {
                k: v.to(device) if torch.is_tensor(v) else v for k, v in self.data_collator(rows).items()
            }
            for name, values in self._precompute_batch(batch).items():
                columns.setdefault(name, []).extend(values.float().cpu().tolist())
        return add_columns(data, columns)

    def _precompute_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ref = self.reference_logps(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        half = ref.shape[0] // 2
        return {"ref_chosen_logps": ref[:half], "ref_rejected_logps": ref[half:]}

    # ---------------------------------------------------------------------------------- metrics
    def record(self, **metrics: Any) -> None:
        """Record one micro-batch's metrics: each a ``(sum, count)`` over its examples (pairs, or
        KTO's rows; a count of 0 when it has none of them), or a plain value, taken as ``(value, 1)``.

        Record every key on every micro-batch (count 0 when absent) so that the ranks' records line
        up: at a log line they are summed over ranks per micro-batch (`_merge_metrics`)."""
        for k, v in metrics.items():
            total, count = v if isinstance(v, tuple) else (v, 1)
            self._metrics.setdefault(k, []).append((float(total), float(count)))

    def derived_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """Metrics computed from one micro-batch's global means (KTO's margins); none by default."""
        return {}

    def latest_metrics(self) -> dict[str, float]:
        """The last micro-batch's metrics on this rank (for tests and debugging)."""
        last = {k: v[-1] for k, v in self._metrics.items() if v}
        values = {k: s / c for k, (s, c) in last.items() if c}
        return {**values, **self.derived_metrics(values)}

    def _merge_metrics(self) -> dict[str, float]:
        """The recorded metrics since the last log line: per micro-batch, the sum over every rank's
        examples divided by their count (what one process with the whole global micro-batch computes),
        then the mean over the micro-batches that had any (TRL's mean of per-batch means)."""
        records, self._metrics = self._metrics, {}
        keys = sorted(records)
        lengths = {len(records[k]) for k in keys}
        if len(lengths) != 1:
            raise RuntimeError(
                f"{type(self).__name__} recorded its metrics unevenly ({ {k: len(records[k]) for k in keys} }): "
                "record every key on every micro-batch (count 0 when the micro-batch has none)."
            )
        table = torch.tensor([records[k] for k in keys], dtype=torch.float64)  # (keys, micro-batches, 2)
        if self._ranks.world > 1:
            device = next(self.model.parameters()).device
            table = self._ranks.total(table.to(device)).cpu()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for i in range(table.shape[1]):
            values = {
                k: float(table[j, i, 0] / table[j, i, 1]) for j, k in enumerate(keys) if table[j, i, 1] > 0
            }
            for k, v in {**values, **self.derived_metrics(values)}.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
        return {k: sums[k] / counts[k] for k in sums}

    def log(self, logs: dict[str, float]) -> None:
        if self._metrics and ("loss" in logs or "eval_loss" in logs):
            prefix = "eval_" if "eval_loss" in logs else ""
            logs = {**logs, **{prefix + k: v for k, v in self._merge_metrics().items()}}
        super().log(logs)

    @torch.no_grad()
    def evaluate(self, eval_dataset: Any = None) -> dict[str, float]:
        """The mean loss over the eval set as ``eval_loss``, with the metrics as ``eval_rewards/...``."""
        if eval_dataset is not None:
            eval_dataset = self._prepare(eval_dataset, self.args)
            if self.uses_reference and getattr(self.args, "precompute_ref_log_probs", False):
                eval_dataset = self.precompute_reference(eval_dataset)
        training_metrics, self._metrics = self._metrics, {}
        try:
            return super().evaluate(eval_dataset)
        finally:
            self._metrics = training_metrics
