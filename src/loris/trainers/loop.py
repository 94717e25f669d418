"""The shared training loop: optimizer, schedule, exact gradient accumulation, logging, checkpoints.

`Trainer.train()` reads top to bottom: set the seed, build the optimizer and schedule, maybe
restore a checkpoint, then repeat one optimizer step — gather ``gradient_accumulation_steps``
micro-batches, count their loss tokens, backward each with ``num_items_in_batch`` = that count
(so the accumulated gradient is the gradient of the mean over every token of the step, whatever
the padding), clip, step, log, save. SFT and GRPO subclass it and override how data is batched
(`get_train_dataloader`, `num_train_batches`, `prepare_micro_batches`) and how a batch becomes a
loss (`count_loss_items`, `compute_loss`).

Data order: epoch ``e`` visits rows in ``torch.randperm(n, generator=manual_seed(data_seed + e))``
order, in micro-batches of ``per_device_train_batch_size``; an optimizer step never spans two
epochs (the last one of an epoch may have fewer micro-batches). The position (epoch, next
micro-batch) is part of every checkpoint, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from loris.data import IGNORE_INDEX
from loris.models.decoder import LorisForCausalLM
from loris.models.generic import GenericCausalLM
from loris.models.state import unwrap_model
from loris.trainers.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from loris.trainers.config import TrainingConfig
from loris.trainers.optim import build_optimizer
from loris.trainers.parallel import Ranks, setup_ranks
from loris.trainers.phase_timer import PhaseTimer
from loris.trainers.plots import LOSS_PLOT, write_loss_plot
from loris.trainers.progress import ProgressBar, bar_mode
from loris.trainers.schedule import build_scheduler

LOG_FILE = "log.jsonl"


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the message names the step and what to change."""


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint as ``trainer_state.json``."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    data_epoch: int = 0  # epoch the next micro-batch comes from
    data_batch: int = 0  # index of the next micro-batch in that epoch's shuffled order
    train_batch_size: int = 0
    num_train_batches: int = 0
    should_stop: bool = False  # a callback may set it; not saved

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("should_stop")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class TrainerCallback:
    """Hooks called by the loop; override the ones you need. Set ``state.should_stop`` to stop early."""

    def on_train_begin(self, state: TrainerState) -> None: ...

    def on_step_end(self, state: TrainerState, logs: dict[str, float]) -> None:
        """After every optimizer step; ``logs`` has that step's loss, grad_norm and learning_rate."""

    def on_log(self, state: TrainerState, logs: dict[str, float]) -> None:
        """Whenever a log line (training every ``logging_steps``, or evaluation) is written."""

    def on_save(self, state: TrainerState, checkpoint: Path) -> None: ...

    def on_train_end(self, state: TrainerState) -> None: ...


class TrainOutput(NamedTuple):
    """What `Trainer.train()` returns, as TRL/transformers do: ``metrics`` has train_runtime,
    train_samples_per_second, train_steps_per_second, train_loss and epoch."""

    global_step: int
    training_loss: float
    metrics: dict[str, float]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of ``epoch``: a function of (seed, epoch) only, so resume can rebuild it."""
    gen = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_rows, generator=gen).tolist()


def count_label_tokens(batch: dict[str, Any]) -> int:
    """Label tokens the model will score: labels are shifted inside the model, so position 0 never is."""
    labels = batch.get("labels")
    if labels is None:
        raise ValueError("The batch has no 'labels': the data collator must produce them for training.")
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


class Trainer:
    """Generic trainer over a `LorisForCausalLM` (or any module returning ``.loss``).

    ``train_dataset`` rows are collated by ``data_collator`` into dicts of tensors that are passed to
    ``model(**batch, num_items_in_batch=n)``. Attributes are read when `train()` runs, so helpers
    that replace ``trainer.train_dataset`` after construction (``train_on_responses_only``) work.
    """

    report_phase_times = False
    """Log ``time/<phase>`` (seconds per step: prepare, forward_backward, optimizer, ...) at each log
    line (`loris.trainers.phase_timer`); trainers whose steps have a costly prepare (GRPO) turn it on."""

    def __init__(
        self,
        model: nn.Module,
        args: TrainingConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        data_collator: Any = None,
        callbacks: Sequence[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
    ) -> None:
        self.model = model
        self.args = args if args is not None else TrainingConfig()
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.data_collator = data_collator
        self.callbacks: list[TrainerCallback] = []
        for cb in callbacks or ():
            self.add_callback(cb)
        self.optimizer, self.lr_scheduler = optimizers
        self._given_optimizers = optimizers  # the user's are kept; ours are rebuilt by each train()
        self.state = TrainerState()
        self._warned: set[str] = set()
        self._bar = ProgressBar(0, mode=None)
        self._ranks = Ranks()  # this process alone until train() opens the process group (parallel.py)
        self._phases: PhaseTimer | None = None  # per train() when report_phase_times (phase_timer.py)

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        if isinstance(callback, type):
            callback = callback()
        if type(callback).__module__.startswith("transformers"):
            raise TypeError(
                f"{type(callback).__name__} is a transformers callback; loris calls hooks as "
                "on_step_end(state, logs). Subclass loris.trainers.TrainerCallback instead."
            )
        self.callbacks.append(callback)

    # ------------------------------------------------------------------------------ overridable pieces
    def num_train_batches(self) -> int:
        """Micro-batches per epoch."""
        n, bs = len(self.train_dataset), self.args.per_device_train_batch_size
        return self._ranks.num_batches(n, bs, self.args.dataloader_drop_last)

    def get_train_dataloader(self, epoch: int = 0, start_batch: int = 0) -> Iterable[dict[str, Any]]:
        """Micro-batches of ``epoch`` from index ``start_batch`` on (shuffled order, see module doc)."""
        if self.train_dataset is None:
            raise ValueError("Trainer.train() needs a train_dataset.")
        bs = self.args.per_device_train_batch_size
        order = epoch_order(len(self.train_dataset), self._data_seed, epoch)
        batches = [
            self._ranks.rows_of_batch(order, i, bs) for i in range(start_batch, self.num_train_batches())
        ]
        return self._loader(self.train_dataset, batches, epoch)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Iterable[dict[str, Any]]:
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        bs = self.args.per_device_eval_batch_size
        batches = [list(range(i, min(i + bs, len(data)))) for i in range(0, len(data), bs)]
        return self._loader(data, batches)

    def prepare_micro_batches(self, micro_batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hook run once per optimizer step before counting tokens (GRPO generates rollouts here)."""
        return micro_batches

    def count_loss_items(self, batch: dict[str, Any]) -> int:
        """Tokens this micro-batch contributes to the step's mean loss."""
        return count_label_tokens(batch)

    def compute_loss(
        self, model: nn.Module, batch: dict[str, Any], num_items_in_batch: int | torch.Tensor
    ) -> torch.Tensor:
        """Summed token loss of ``batch`` divided by the step's ``num_items_in_batch``."""
        out = model(**batch, num_items_in_batch=num_items_in_batch)
        loss = out["loss"] if isinstance(out, dict) else getattr(out, "loss", None)
        if loss is None:
            raise ValueError("The model returned no loss: the batch needs 'labels'.")
        return loss

    # ---------------------------------------------------------------------------------------- training
    def train(self, resume_from_checkpoint: bool | str | None = None) -> TrainOutput:
        """Run training to ``max_steps`` (or ``num_train_epochs``); returns step, mean loss, metrics."""
        args = self.args
        resume = resume_from_checkpoint if resume_from_checkpoint is not None else args.resume_from_checkpoint
        set_seed(args.seed)
        self._warn_unsupported()
        model = self.model
        model.train()
        self._enable_gradient_checkpointing(model)
        if self._ranks.wrapped is None:  # a second train() keeps the first one's DDP/FSDP2 wrapper
            self._ranks = setup_ranks(model, args)  # one process: a no-op; else DDP/FSDP2 (parallel.py)

        if self.train_dataset is not None and len(self.train_dataset) == 0:
            raise ValueError(
                "The train dataset is empty (0 rows): nothing to train on. Check the data file, split and "
                "any filtering (train_on_responses_only drops rows with no answer tokens)."
            )
        batches_per_epoch = self.num_train_batches()
        if batches_per_epoch < 1:
            raise ValueError(
                f"The train dataset gives no batches ({len(self.train_dataset)} rows, batch size "
                f"{args.per_device_train_batch_size}): add rows or lower per_device_train_batch_size."
            )
        steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        max_steps = (
            args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        )
        self.optimizer, self.lr_scheduler = self._given_optimizers
        if self.optimizer is None:
            self.optimizer = build_optimizer(model, args)
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(
                self.optimizer,
                args.lr_scheduler_type,
                max_steps,
                args.total_warmup_steps(max_steps),
                args.learning_rate,
                args.lr_scheduler_kwargs,
            )
        self.state = TrainerState(
            max_steps=max_steps,
            train_batch_size=args.per_device_train_batch_size * self._ranks.world,
            num_train_batches=batches_per_epoch,
        )
        if resume:
            self._resume(resolve_checkpoint(resume, args.output_dir))
            self.state.max_steps = max_steps
        state = self.state
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        scaler = self._grad_scaler()

        for cb in self.callbacks:
            cb.on_train_begin(state)
        start_time = time.perf_counter()
        start_step, run_losses = state.global_step, []
        batches = self._micro_batch_stream(batches_per_epoch)
        self.optimizer.zero_grad(set_to_none=True)  # nothing left over from an earlier backward
        self._bar = ProgressBar(
            max_steps, state.global_step, bar_mode(args.disable_tqdm) if self._ranks.is_main else None
        )
        try:
            self._train_steps(model, batches, batches_per_epoch, max_steps, scaler, run_losses)
        finally:
            self._bar.close()

        for cb in self.callbacks:
            cb.on_train_end(state)
        runtime = time.perf_counter() - start_time
        done = state.global_step - start_step
        training_loss = sum(run_losses) / len(run_losses) if run_losses else float("nan")
        metrics = {
            "train_runtime": runtime,
            "train_samples_per_second": done
            * args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * self._ranks.world
            / max(runtime, 1e-9),
            "train_steps_per_second": done / max(runtime, 1e-9),
            "train_loss": training_loss,
            "epoch": state.epoch,
        }
        if self._ranks.is_main:
            write_loss_plot(state.log_history, Path(args.output_dir) / LOSS_PLOT, args.run_name or "")
        return TrainOutput(state.global_step, training_loss, metrics)

    def _train_steps(
        self,
        model: nn.Module,
        batches: Iterator[dict[str, Any]],
        batches_per_epoch: int,
        max_steps: int,
        scaler: Any,
        run_losses: list[float],
    ) -> None:
        """Optimizer steps until ``max_steps`` (or a callback stops): accumulate, clip, step, log, save."""
        args, state = self.args, self.state
        log_every = TrainingConfig.every(args.logging_steps, max_steps)
        save_every = TrainingConfig.every(args.save_steps, max_steps)
        eval_every = TrainingConfig.every(args.eval_steps, max_steps)
        window_start = time.perf_counter()
        window_loss, window_steps, window_tokens = 0.0, 0, 0
        self._phases = PhaseTimer(_device_of(model)) if self.report_phase_times else None
        while state.global_step < max_steps and not state.should_stop:
            self._mark_phase("between_steps")  # logging, callbacks, evaluation, saving
            micro_batches, epoch_ended = self._next_step_batches(batches, batches_per_epoch)
            loss, tokens = self._accumulate(model, micro_batches, scaler)
            step = state.global_step + 1
            if not math.isfinite(loss):
                self._diverged(
                    f"The training loss is {loss} at step {step} (epoch {state.epoch:.2f}). Lower "
                    f"learning_rate (now {args.learning_rate:g}), keep max_grad_norm > 0, and train in "
                    "fp32 or bf16 rather than fp16; also check the data for rows with no label tokens."
                )
            grad_norm = self._clip_gradients(scaler)
            if scaler is None and not math.isfinite(grad_norm):
                self._diverged(
                    f"The gradient norm is {grad_norm} at step {step} (loss {loss:.4f}). Lower "
                    f"learning_rate (now {args.learning_rate:g}) or train in fp32/bf16 instead of fp16."
                )
            lrs = [group["lr"] for group in self.optimizer.param_groups]
            if scaler is not None:
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._mark_phase("optimizer", ends_step=True)  # with clipping

            state.global_step = step
            state.epoch = state.data_epoch + state.data_batch / batches_per_epoch
            step_logs = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lrs[0]}
            run_losses.append(loss)
            window_loss, window_steps, window_tokens = (
                window_loss + loss,
                window_steps + 1,
                window_tokens + tokens,
            )
            for cb in self.callbacks:
                cb.on_step_end(state, step_logs)
            self._bar.update(loss, lrs[0], tokens)  # its tokens/s: the whole run so far

            last = step == max_steps or state.should_stop
            if step % log_every == 0 or last or (step == 1 and args.logging_first_step):
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                logs = {
                    "loss": window_loss / window_steps,
                    "grad_norm": grad_norm,
                    "learning_rate": lrs[0],
                    "epoch": round(state.epoch, 4),
                    "tokens_per_second": window_tokens / elapsed,  # since the previous log line
                }
                if len(lrs) > 1 and args.embedding_learning_rate is not None:
                    logs["embedding_learning_rate"] = lrs[-1]
                if torch.cuda.is_available():
                    logs["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if self._phases is not None:
                    logs.update(self._phases.read())
                self.log(logs)
                window_loss, window_steps, window_tokens = 0.0, 0, 0
                window_start = time.perf_counter()
            if self.eval_dataset is not None and (
                (args.eval_strategy == "steps" and step % eval_every == 0)
                or (args.eval_strategy == "epoch" and epoch_ended)
            ):
                self.evaluate()
            if args.save_strategy != "no" and (
                last
                or (args.save_strategy == "steps" and step % save_every == 0)
                or (args.save_strategy == "epoch" and epoch_ended)
            ):
                self._check_finite_weights(step)
                self.save_checkpoint()

    def _check_finite_weights(self, step: int) -> None:
        """Refuse to checkpoint non-finite weights: a bad checkpoint must never replace (or rotate out)
        the last good one."""
        bad = [
            n
            for n, p in self.model.named_parameters()
            if p.requires_grad
            and not bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
        ]
        if self._ranks.any(bool(bad)):
            self._diverged(
                f"After step {step} the weights hold NaN/inf ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}), so no checkpoint was written. Lower learning_rate "
                f"(now {self.args.learning_rate:g}) or keep max_grad_norm > 0."
            )

    def _diverged(self, message: str) -> None:
        """Stop with ``message`` plus where to resume from: nothing is saved after a non-finite step."""
        found = list_checkpoints(self.args.output_dir)
        if found:
            message += (
                f" The last good checkpoint is {found[-1]!s}; resume_from_checkpoint can restart from it."
            )
        raise TrainingDivergedError(message)

    def _enable_gradient_checkpointing(self, model: nn.Module) -> None:
        """``gradient_checkpointing=True``: per-block recompute, unless the model already has a mode
        (e.g. "offload" from get_peft_model), which is kept."""
        if not self.args.gradient_checkpointing:
            return
        inner = unwrap_model(model)
        if isinstance(inner, GenericCausalLM):  # transformers' own per-layer checkpointing
            if inner.gradient_checkpointing is None:
                inner.gradient_checkpointing = True
                inner.state.checkpointing = True
            return
        if not isinstance(inner, LorisForCausalLM):
            self._warn_once(
                "gc-model",
                f"gradient_checkpointing=True has no effect on {type(inner).__name__}: loris checkpoints "
                "the blocks of its own decoder only.",
            )
            return
        if inner.gradient_checkpointing is None:
            from loris.checkpointing import make_checkpoint_fn

            inner.gradient_checkpointing = make_checkpoint_fn(True)
            inner.state.checkpointing = True

    def _accumulate(
        self, model: nn.Module, micro_batches: list[dict[str, Any]], scaler: Any
    ) -> tuple[float, int]:
        """Backward every micro-batch of one step; returns (the step's mean token loss, tokens seen)."""
        micro_batches = self.prepare_micro_batches(micro_batches)
        self._mark_phase("prepare")
        n_items, divide_by = self._ranks.loss_normaliser(sum(self.count_loss_items(b) for b in micro_batches))
        if isinstance(n_items, int) and n_items == 0:
            self._warn_once(
                "no-labels",
                "An optimizer step had no label tokens (every label is -100): its loss is 0 and only weight "
                "decay moves the weights. Check the response-only masks and max_length.",
            )
            divide_by = 1
        device = _device_of(model)
        total, tokens = None, 0
        for i, batch in enumerate(micro_batches):
            mask = batch.get("attention_mask")
            tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
            batch = {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            with self._ranks.micro_batch(last=i == len(micro_batches) - 1):
                with self._autocast(device):
                    loss = self._ranks.forward(self.compute_loss, model, batch, divide_by)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        self._mark_phase("forward_backward")
        return self._ranks.mean(float(total)), self._ranks.total(tokens)

    def _mark_phase(self, phase: str, *, ends_step: bool = False) -> None:
        """End ``phase`` of the current step in the phase timer, when this trainer reports them."""
        if self._phases is not None:
            self._phases.mark(phase, ends_step=ends_step)

    def _clip_gradients(self, scaler: Any) -> float:
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else math.inf
        return self._ranks.grad_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))

    # ------------------------------------------------------------------------------------ data stream
    @property
    def _data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _micro_batch_stream(self, batches_per_epoch: int) -> Iterator[dict[str, Any]]:
        """Endless micro-batches from the saved position on; the state's position advances as they go."""
        state = self.state
        while True:
            if state.data_batch >= batches_per_epoch:
                state.data_epoch, state.data_batch = state.data_epoch + 1, 0
            for batch in self.get_train_dataloader(state.data_epoch, state.data_batch):
                state.data_batch += 1
                yield batch

    def _next_step_batches(
        self, stream: Iterator[dict[str, Any]], batches_per_epoch: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``gradient_accumulation_steps`` micro-batches, stopping at the end of an epoch."""
        out = []
        for _ in range(self.args.gradient_accumulation_steps):
            out.append(next(stream))
            if self.state.data_batch >= batches_per_epoch:
                return out, True
        return out, False

    def _loader(self, data: Any, batches: list[list[int]], epoch: int = 0) -> Iterable[dict[str, Any]]:
        if self.data_collator is None:
            raise ValueError("The trainer has no data_collator to turn rows into tensors.")
        # Its own generator: starting a DataLoader then draws no number from the global torch RNG
        # (which a resumed run would otherwise do at a different point), and worker seeds repeat.
        return torch.utils.data.DataLoader(
            data,
            batch_sampler=batches,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(self._data_seed + epoch),
        )

    # ---------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, eval_dataset: Any = None) -> dict[str, float]:
        """Token-weighted mean loss over the eval set, logged as ``eval_loss``."""
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if data is None:
            raise ValueError("evaluate() needs an eval_dataset (pass one to the trainer or to evaluate()).")
        model = self.model
        was_training = model.training
        model.eval()
        device = _device_of(model)
        total, count = 0.0, 0
        try:
            for batch in self.get_eval_dataloader(data):
                n = self.count_loss_items(batch)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with self._autocast(device):
                    total += float(
                        self._ranks.forward(self.compute_loss, model, batch, 1)
                    )  # summed token loss
                count += int(n)
        finally:
            model.train(was_training)
        metrics = {"eval_loss": total / max(count, 1), "epoch": round(self.state.epoch, 4)}
        self.log(metrics)
        return metrics

    # ------------------------------------------------------------------------------------ logs, saving
    def log(self, logs: dict[str, float]) -> None:
        """Record ``logs`` at the current step: state.log_history, stdout and output_dir/log.jsonl."""
        entry = {**logs, "step": self.state.global_step}
        self.state.log_history.append(entry)
        if not self._ranks.is_main:  # every rank keeps the history; rank 0 alone prints and writes it
            for cb in self.callbacks:
                cb.on_log(self.state, entry)
            return
        self._bar.write(str({k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()}))
        path = Path(self.args.output_dir)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / LOG_FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")
        for cb in self.callbacks:
            cb.on_log(self.state, entry)

    def save_checkpoint(self) -> Path:
        """Write ``output_dir/checkpoint-<step>`` (atomically) and apply ``save_total_limit``."""
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        save_checkpoint(
            folder,
            self.model,
            self.optimizer,
            self.lr_scheduler,
            self.state.to_dict(),
            self.args.to_yaml(),
        )
        rotate_checkpoints(self.args.output_dir, self.args.save_total_limit)
        for cb in self.callbacks:
            cb.on_save(self.state, folder)
        return folder

    def _resume(self, folder: Path) -> None:
        saved = TrainerState.from_dict(load_checkpoint(folder, self.model, self.optimizer, self.lr_scheduler))
        now = self.state
        if (saved.train_batch_size, saved.num_train_batches) != (now.train_batch_size, now.num_train_batches):
            raise ValueError(
                f"Checkpoint {folder!s} was trained with batch size {saved.train_batch_size} over "
                f"{saved.num_train_batches} micro-batches per epoch; now it is {now.train_batch_size} over "
                f"{now.num_train_batches}. Resume with the same per_device_train_batch_size and dataset."
            )
        self.state = saved
        log = Path(self.args.output_dir) / LOG_FILE
        if self._ranks.is_main and log.is_file():  # drop lines the run being redone wrote after it
            kept = [
                ln
                for ln in log.read_text().splitlines()
                if ln and json.loads(ln).get("step", 0) <= saved.global_step
            ]
            log.write_text("".join(ln + "\n" for ln in kept))

    # ------------------------------------------------------------------------------------ precision
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if device.type == "cuda" and (self.args.bf16 or self.args.fp16):
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.args.bf16 else torch.float16)
        return contextlib.nullcontext()

    def _grad_scaler(self) -> Any:
        if not (self.args.fp16 and _device_of(self.model).type == "cuda"):
            return None
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if any(p.dtype == torch.float16 for p in trainable):
            self._warn_once(
                "fp16-params",
                "fp16=True with fp16 trainable weights: gradient scaling needs fp32 master weights, so it "
                "is off. Prefer bf16, or fp32 adapters.",
            )
            return None
        return torch.amp.GradScaler("cuda")

    def _warn_unsupported(self) -> None:
        args = self.args
        if (args.bf16 or args.fp16) and _device_of(self.model).type != "cuda":
            self._warn_once(
                "cpu-amp",
                "bf16/fp16 autocast applies on CUDA only; on CPU training runs in the model's dtype.",
            )
        other = [r for r in args.report_to if r != "jsonl"]
        if other:
            self._warn_once(
                "report_to",
                f"report_to={other}: loris writes logs to stdout and {args.output_dir}/{LOG_FILE} only.",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
