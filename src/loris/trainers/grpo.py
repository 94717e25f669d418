"""GRPO: `GRPOConfig` (TRL's names, meanings and 1.15 defaults) and `GRPOTrainer` on the shared loop.

    trainer = GRPOTrainer(model=model, reward_funcs=[f, g], args=GRPOConfig(num_generations=8, ...),
                          train_dataset=ds, processing_class=tokenizer)
    trainer.train()

Each optimizer step pulls prompt micro-batches from the loop; at the start of a generation cycle
(`prepare_micro_batches`) the engine samples ``num_generations`` completions per prompt (one shared
prefill each), the reward functions score them, advantages are normalised per group, and the
generation batch is cut into micro-batches of ``per_device_train_batch_size`` completions. A cycle
serves ``steps_per_generation × num_iterations`` micro-batches; when the policy can have moved
since generation, importance ratios use the log-probs taken at generation time. The reference
policy for the KL term (``beta`` > 0) is the same model with its adapters switched off.

Defaults are TRL 1.15's (loss_type "dapo", beta 0.0, epsilon 0.2, scale_rewards "group",
num_generations 8, max_completion_length 256 here vs TRL's 512, see below). Unsloth's patched
trainer differs: loss_type "bnpo", beta 0.001, batch size forced to a multiple of
num_generations, dr_grpo forcing scale_rewards off and dapo forcing mask_truncated_completions
with epsilon_high 0.28. Set those explicitly to reproduce an Unsloth run.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loris.models.state import model_state
from loris.trainers.config import TrainingConfig
from loris.trainers.grpo_loss import (
    LOSS_TYPES,
    LossSettings,
    completion_logps,
    group_advantages,
    grpo_loss,
    nanstd,
)
from loris.trainers.grpo_ranks import global_advantages, rank_completion_rows
from loris.trainers.grpo_rewards import RewardFunc, reward_name, score
from loris.trainers.loop import Trainer, TrainerCallback, epoch_order

REWARD_PLOT = "reward.png"

SEQUENCE_MULTIPLE = 64
"""Log-prob forwards (prompt + completion) are padded on the right to a multiple of this many
tokens. Their length otherwise changes every step (prompt width, longest completion), and each new
shape costs the GPU's attention and GEMM kernels a new plan; the padding sits after every real
token, so causal attention keeps it out of their log-probs (see `padded_completion_logps`)."""


@dataclass
class GRPOConfig(TrainingConfig):
    """`TrainingConfig` plus TRL's GRPO fields.

    ``per_device_train_batch_size`` counts completions (as in TRL), so one micro-batch holds
    ``per_device_train_batch_size / num_generations`` prompts' groups when it divides.
    ``generation_batch_size`` (or ``steps_per_generation``, default ``gradient_accumulation_steps``)
    sets how many completions one generation makes; it must be a multiple of ``num_generations``.
    ``max_prompt_length`` (absent from TRL 1.15, kept for Unsloth notebooks) truncates prompts from
    the left with a warning; None keeps them whole. ``scale_rewards`` True/False mean "group"/"none".
    ``logprob_chunk_size``: tokens per LM-head chunk when computing log-probs (memory vs speed).
    ``generation_decode``: the engine's decode mode ("auto" = CUDA graph on GPU, eager on CPU).
    """

    learning_rate: float = 1e-6
    logging_steps: float = 10
    num_generations: int = 8
    generation_batch_size: int | None = None
    steps_per_generation: int | None = None
    max_prompt_length: int | None = None
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "dapo"
    scale_rewards: str | bool = "group"
    reward_weights: list[float] | None = None
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    log_completions: bool = False
    logprob_chunk_size: int = 128  # ~6 fp32 (chunk, vocab) buffers live at once: 0.4 GB at 128k vocab
    generation_decode: str = "auto"
    use_vllm: bool = False  # accepted (Unsloth/TRL notebooks): loris's own engine always generates
    vllm_sampling_params: Any = None  # a SamplingParams: its top_p / top_k / min_p / repetition_penalty apply

    def __post_init__(self) -> None:
        super().__post_init__()
        self._adopt_notebook_settings()
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards={self.scale_rewards!r}: choose 'group', 'batch' or 'none'.")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: choose one of {list(LOSS_TYPES)}.")
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: GRPO compares completions of one prompt, so it "
                "needs at least 2."
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 (GRPO samples).")
        if self.num_iterations < 1 or self.max_completion_length < 1:
            raise ValueError("num_iterations and max_completion_length must be >= 1.")
        bs = self.per_device_train_batch_size
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("Set generation_batch_size or steps_per_generation, not both.")
        if self.generation_batch_size is None:
            self.steps_per_generation = self.steps_per_generation or self.gradient_accumulation_steps
            self.generation_batch_size = bs * self.steps_per_generation
        elif self.generation_batch_size % bs:
            raise ValueError(
                f"generation_batch_size={self.generation_batch_size} must be a multiple of "
                f"per_device_train_batch_size={bs}."
            )
        else:
            self.steps_per_generation = self.generation_batch_size // bs
        if self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"The generation batch ({self.generation_batch_size} completions = per_device_train_batch_size "
                f"{bs} x steps_per_generation {self.steps_per_generation}) is not a multiple of "
                f"num_generations={self.num_generations}: every prompt needs all its completions in one batch. "
                f"Use per_device_train_batch_size={self.num_generations} (or a multiple of it)."
            )

    def _adopt_notebook_settings(self) -> None:
        """Unsloth notebooks' spellings: vLLM sampling settings, and a batch smaller than one group
        (Unsloth raises per_device_train_batch_size to num_generations; so does loris, saying so)."""
        sp = self.vllm_sampling_params
        if sp is not None:
            self.top_p, self.top_k = sp.top_p, max(int(sp.top_k), 0)
            self.min_p = sp.min_p or None
            self.repetition_penalty = sp.repetition_penalty
            if sp.stop:
                warnings.warn(
                    "vllm_sampling_params.stop is not applied: GRPO completions end at the tokenizer's EOS "
                    "tokens (and max_completion_length).",
                    stacklevel=3,
                )
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        if (
            self.generation_batch_size is None
            and self.per_device_train_batch_size * steps < self.num_generations
        ):
            warnings.warn(
                f"per_device_train_batch_size={self.per_device_train_batch_size} holds less than one group of "
                f"num_generations={self.num_generations} completions: using per_device_train_batch_size="
                f"{self.num_generations} (one prompt's completions per micro-batch), as Unsloth does.",
                stacklevel=3,
            )
            self.per_device_train_batch_size = self.num_generations

    @property
    def prompts_per_generation(self) -> int:
        return self.generation_batch_size // self.num_generations


def padded_completion_logps(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    pad_id: int,
    *,
    temperature: float,
    chunk_size: int,
    multiple: int = SEQUENCE_MULTIPLE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_logps` of ``completion_ids`` (rows, width) after the left-padded prompts, with
    ``pad_id`` tokens appended so the sequence is a multiple of ``multiple`` long; returns
    (log-probs, entropies) of the ``width`` real columns only.

    The padding is attended (mask 1), so an unpadded batch keeps SDPA's causal path; being last,
    it is seen by no real position. Models whose rotary tables depend on the longest position
    (dynamic NTK, LongRoPE) are not padded: more positions could change their tables."""
    width = completion_ids.shape[1]
    cfg = model.config
    length_dependent = any(
        cfg.rope_for_layer(i).rope_type in ("dynamic", "longrope") for i in range(cfg.num_layers)
    )
    extra = 0 if length_dependent else -(prompt_ids.shape[1] + width) % multiple
    comp = completion_ids
    if extra:
        comp = torch.cat([comp, comp.new_full((comp.shape[0], extra), pad_id)], 1)
    ids = torch.cat([prompt_ids, comp], 1)
    mask = torch.cat([prompt_mask, torch.ones_like(comp)], 1)
    logps, entropy = completion_logps(
        model, ids, mask, comp.shape[1], temperature=temperature, chunk_size=chunk_size
    )
    return logps[:, :width], entropy[:, :width]


class _Rollout:
    """One generation batch: tensors per completion row, cut into micro-batches on demand."""

    def __init__(
        self, tensors: dict[str, torch.Tensor], gen_tokens: float, slices: int, rows: list[int] | None = None
    ):
        self.tensors, self.gen_tokens, self.slices = tensors, gen_tokens, slices
        self.rows = rows  # the generation batch's completion rows these are (grpo_ranks.py)

    def micro_batch(self, slot: int) -> dict[str, Any]:
        rows = self.tensors["completion_ids"].shape[0] // self.slices
        part = slot % self.slices
        sel = slice(part * rows, (part + 1) * rows)
        batch = {k: v[sel] for k, v in self.tensors.items()}
        keep = (
            int(batch["completion_mask"].sum(0).nonzero().max()) + 1 if batch["completion_mask"].any() else 1
        )
        for k in ("completion_ids", "completion_mask", "old_logps", "ref_logps"):
            if k in batch:
                batch[k] = batch[k][:, :keep]
        batch["generation_tokens"] = self.gen_tokens
        # what the loop counts for tokens/s: prompt plus real completion tokens
        batch["attention_mask"] = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        return batch


class GRPOTrainer(Trainer):
    """TRL's `GRPOTrainer` signature on loris's loop; see the module docstring."""

    report_phase_times = True  # time/generation, time/rewards, time/forward_backward, ... per step

    def __init__(
        self,
        model: nn.Module,
        reward_funcs: RewardFunc | Sequence[RewardFunc],
        args: GRPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        callbacks: Sequence[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        *,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("peft_config") is not None:
            raise TypeError(
                "peft_config: add adapters with FastLanguageModel.get_peft_model(model, ...) first."
            )
        args = args if args is not None else GRPOConfig()
        if not isinstance(args, GRPOConfig):
            raise TypeError(f"args must be a GRPOConfig, got {type(args).__name__}")
        super().__init__(model, args, train_dataset, eval_dataset, None, callbacks, optimizers)
        self.tokenizer = processing_class if processing_class is not None else tokenizer
        if self.tokenizer is None:
            self.tokenizer = model_state(model).tokenizer
        if self.tokenizer is None:
            raise ValueError("GRPOTrainer needs the tokenizer: pass processing_class=tokenizer.")
        funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        for f in funcs:
            if not callable(f):
                raise TypeError(
                    f"reward function {f!r} is not callable; loris takes Python functions "
                    "f(prompts, completions, **columns) -> list[float] (reward models: wrap them in one)."
                )
        self.reward_funcs: list[Callable] = funcs
        w = args.reward_weights or [1.0] * len(funcs)
        if len(w) != len(funcs):
            raise ValueError(f"reward_weights has {len(w)} values for {len(funcs)} reward functions.")
        self.reward_weights = torch.tensor(w, dtype=torch.float32)
        self._rollout: _Rollout | None = None
        self._rollout_rows: tuple | None = None
        self._metrics: dict[str, list[float]] = {}
        self._gen_seconds = 0.0
        self._window_start = time.perf_counter()
        self._completions_log: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------------------------- data
    @property
    def _cycle(self) -> int:
        return self.args.steps_per_generation * self.args.num_iterations

    @property
    def _prompts_per_generation(self) -> int:
        """Prompts of one generation batch over every rank (see grpo_ranks.py)."""
        return self.args.prompts_per_generation * self._ranks.world

    def num_train_batches(self) -> int:
        return (len(self.train_dataset) // self._prompts_per_generation) * self._cycle

    def get_train_dataloader(self, epoch: int = 0, start_batch: int = 0):
        """Micro-batch descriptors: the prompt rows of their generation cycle and their slot in it."""
        if self.train_dataset is None:
            raise ValueError("GRPOTrainer.train() needs a train_dataset with a 'prompt' column.")
        per = self._prompts_per_generation
        order = epoch_order(len(self.train_dataset), self._data_seed, epoch)
        for i in range(start_batch, self.num_train_batches()):
            g, slot = divmod(i, self._cycle)
            yield {"rows": tuple(order[g * per : (g + 1) * per]), "slot": slot}

    def prepare_micro_batches(self, micro_batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for desc in micro_batches:
            if desc["slot"] == 0 or self._rollout is None or self._rollout_rows != desc["rows"]:
                self._rollout = self._generate_and_score(list(desc["rows"]))
                self._rollout_rows = desc["rows"]
            out.append(self._rollout.micro_batch(desc["slot"]))
        for b in out:
            b["grad_accum"] = len(out)
        return out

    def count_loss_items(self, batch: dict[str, Any]) -> int:
        return int(batch["completion_mask"].sum())

    # ------------------------------------------------------------------------------------ rollouts
    def _prompt_ids(self, prompt: Any) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, list):  # conversational
            text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, str):
            ids = tok(prompt)["input_ids"]
        else:
            raise TypeError(
                f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
            )
        limit = self.args.max_prompt_length
        if limit is not None and len(ids) > limit:
            self._warn_once(
                "prompt-truncated",
                f"A prompt has {len(ids)} tokens, more than max_prompt_length={limit}: it is truncated from "
                "the left (its start is dropped). Raise max_prompt_length to keep whole prompts.",
            )
            ids = ids[-limit:]
        return ids

    @torch.no_grad()
    def _generate_and_score(self, rows: list[int]) -> _Rollout:
        from loris.generation import engine
        from loris.generation.fast import eos_ids
        from loris.generation.sampling import SamplingConfig

        args, tok, model = self.args, self.tokenizer, self.model
        n = args.num_generations
        data = [self.train_dataset[i] for i in rows]
        if any("prompt" not in r for r in data):
            raise ValueError("GRPO datasets need a 'prompt' column (text or a list of chat messages).")
        prompts = [r["prompt"] for r in data]
        prompt_ids = [self._prompt_ids(p) for p in prompts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        eos = eos_ids(model, tok)
        ranks, total_rows = self._ranks, len(rows) * n
        if ranks.world == 1:  # one shared prefill per prompt for its n completions
            local, gen_n, gen_prompts = list(range(total_rows)), n, prompt_ids
        else:  # this rank's rows of the generation batch, which may start or end mid-group
            local = rank_completion_rows(
                total_rows, args.per_device_train_batch_size, ranks.world, ranks.info.rank
            )
            gen_n, gen_prompts = 1, [prompt_ids[g // n] for g in local]
        ids, mask = engine.left_pad(gen_prompts, pad)
        sampling = SamplingConfig(
            do_sample=True,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p or 0.0,
            repetition_penalty=args.repetition_penalty,
        )
        device = model.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        result = engine.run(
            model,
            ids,
            mask,
            n=gen_n,
            max_new_tokens=args.max_completion_length,
            sampling=sampling,
            eos_token_ids=eos,
            pad_token_id=pad,
            options=engine.EngineOptions(decode=args.generation_decode),
            seed=self._generation_seed(),
        )
        sync()
        gen_time = time.perf_counter() - t0
        self._gen_seconds += gen_time
        self._mark_phase("generation")
        completion_ids = result.tokens.clone()
        lengths = result.lengths.clone()
        width = completion_ids.shape[1]
        completion_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
        completion_ids = completion_ids.masked_fill(completion_mask == 0, pad)
        truncated = torch.tensor([r == "length" for r in result.finish_reasons], device=device)
        if args.mask_truncated_completions:
            completion_mask = completion_mask * (~truncated)[:, None].long()

        # Rewards, with every extra column repeated for each completion of its prompt.
        rows_ids = [c[:k] for c, k in zip(completion_ids.tolist(), lengths.tolist(), strict=True)]
        texts = [tok.decode(c, skip_special_tokens=True) for c in rows_ids]
        rep_prompts = [prompts[g // n] for g in local]
        if isinstance(prompts[0], list):
            completions: list[Any] = [[{"role": "assistant", "content": t}] for t in texts]
        else:
            completions = texts
        columns = {
            k: [data[g // n][k] for g in local] for k in data[0] if k not in ("prompt", "completion_ids")
        }
        per_func = score(self.reward_funcs, rep_prompts, completions, rows_ids, columns, self.state)
        if ranks.world == 1:
            adv, total, _ = group_advantages(per_func, self.reward_weights, n, args.scale_rewards)
            all_rewards, all_adv = per_func, adv
        else:
            adv, all_rewards, total, all_adv = global_advantages(
                per_func, local, total_rows, self.reward_weights, n, args.scale_rewards
            )

        prompt_rows = ids.to(device).repeat_interleave(gen_n, 0)
        prompt_mask = mask.to(device).repeat_interleave(gen_n, 0)
        tensors = {
            "prompt_ids": prompt_rows,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "advantages": adv.to(device),
        }
        self._mark_phase("rewards")  # decoding the completions, reward functions, advantages
        needs_old = args.num_iterations > 1 or args.steps_per_generation > args.gradient_accumulation_steps
        if needs_old or args.beta != 0.0:
            was = model.training
            model.eval()
            try:
                if needs_old:
                    tensors["old_logps"] = self._logps_batched(tensors)
                if args.beta != 0.0:
                    from loris.lora import adapters_disabled

                    with adapters_disabled(model):
                        tensors["ref_logps"] = self._logps_batched(tensors)
            finally:
                model.train(was)
            self._mark_phase("old_ref_logps")

        # reward metrics over the whole generation batch; the completions log shows this rank's rows
        mine = total if ranks.world == 1 else total[torch.tensor(local)]
        self._record_rollout(
            all_rewards, total, all_adv, lengths, truncated, gen_time, texts, rep_prompts, mine
        )
        # dapo divides by the batch's completion tokens: every rank's, shared out (ranks average gradients)
        gen_tokens = ranks.total(float(completion_mask.sum())) / ranks.world
        return _Rollout(tensors, gen_tokens, args.steps_per_generation, local)

    def _generation_seed(self) -> int | None:
        """None in one process (the global generator samples, as always); with several ranks a seed
        per (run seed, data position, rank), so ranks sharing a prompt draw different completions."""
        if self._ranks.world == 1:
            return None
        s = self.state
        return (
            self.args.seed * 1_000_003 + s.data_epoch * 10_007 + s.data_batch
        ) * 1024 + self._ranks.info.rank

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else 0

    def _logps(self, model, prompt_ids, prompt_mask, completion_ids) -> tuple[torch.Tensor, torch.Tensor]:
        # Completion positions after an EOS are padding the model may attend to harmlessly (causal):
        # they come after every scored token, so the scored log-probs do not depend on them.
        return padded_completion_logps(
            model,
            prompt_ids,
            prompt_mask,
            completion_ids,
            self._pad_id,
            temperature=self.args.temperature,
            chunk_size=self.args.logprob_chunk_size,
            multiple=SEQUENCE_MULTIPLE,
        )

    def _logps_batched(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        bs = self.args.per_device_train_batch_size
        parts = []
        for s in range(0, t["completion_ids"].shape[0], bs):
            sel = slice(s, s + bs)
            lp, _ = self._logps(
                self.model, t["prompt_ids"][sel], t["prompt_mask"][sel], t["completion_ids"][sel]
            )
            parts.append(lp)
        return torch.cat(parts)

    # ----------------------------------------------------------------------------------------- loss
    def compute_loss(self, model: nn.Module, batch: dict[str, Any], num_items_in_batch) -> torch.Tensor:
        args = self.args
        logps, entropy = self._logps(
            model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"]
        )
        cmask = batch["completion_mask"]
        settings = LossSettings(
            loss_type=args.loss_type,
            epsilon=args.epsilon,
            epsilon_high=args.epsilon_high,
            beta=args.beta,
            max_completion_length=args.max_completion_length,
            grad_accum=batch["grad_accum"],
            steps_per_generation=args.steps_per_generation,
        )
        if self._ranks.world > 1 and args.loss_type == "bnpo":  # the micro-batch's tokens on every rank
            settings.micro_batch_tokens = self._ranks.total(float(cmask.sum())) / self._ranks.world
        loss, metrics = grpo_loss(
            logps,
            batch.get("old_logps"),
            batch.get("ref_logps"),
            batch["advantages"],
            cmask,
            settings,
            batch["generation_tokens"],
        )
        metrics["entropy"] = float((entropy * cmask).sum() / cmask.sum().clamp(min=1))
        for k, v in metrics.items():
            self._metrics.setdefault(k, []).append(v)
        return loss

    # -------------------------------------------------------------------------------------- logging
    def _record_rollout(
        self, per_func, total, adv, lengths, truncated, gen_time, texts, prompts, mine
    ) -> None:
        m = self._metrics
        for j, f in enumerate(self.reward_funcs):
            col = per_func[:, j]
            m.setdefault(f"rewards/{reward_name(f)}/mean", []).append(float(torch.nanmean(col)))
            m.setdefault(f"rewards/{reward_name(f)}/std", []).append(float(nanstd(col)))
        m.setdefault("reward", []).append(float(torch.nanmean(total)))
        m.setdefault("reward_std", []).append(float(nanstd(total)))
        m.setdefault("advantage_std", []).append(float(adv.std()) if adv.numel() > 1 else 0.0)
        lf = lengths.float()
        m.setdefault("completions/mean_length", []).append(float(lf.mean()))
        m.setdefault("completions/min_length", []).append(float(lf.min()))
        m.setdefault("completions/max_length", []).append(float(lf.max()))
        m.setdefault("completions/clipped_ratio", []).append(float(truncated.float().mean()))
        m.setdefault("gen_tokens_per_second", []).append(float(lf.sum()) / max(gen_time, 1e-9))
        if self.args.log_completions:
            self._completions_log = [
                {"prompt": p, "completion": c, "reward": float(r)}
                for p, c, r in zip(prompts, texts, mine.tolist(), strict=True)
            ]

    def log(self, logs: dict[str, float]) -> None:
        if "loss" in logs and "eval_loss" not in logs:
            now = time.perf_counter()
            merged = {k: sum(v) / len(v) for k, v in self._metrics.items() if v}
            if any(k.startswith("completions/") for k in merged):
                merged["completions/min_length"] = min(self._metrics["completions/min_length"])
                merged["completions/max_length"] = max(self._metrics["completions/max_length"])
            merged["gen_time_share"] = self._gen_seconds / max(now - self._window_start, 1e-9)
            logs = {**logs, **merged}
            self._metrics, self._gen_seconds, self._window_start = {}, 0.0, now
            if self._completions_log:
                for row in self._completions_log[: self.args.num_generations]:
                    print(f"[completion] reward={row['reward']:.3f} {row['completion']!r}")
        super().log(logs)

    def train(self, resume_from_checkpoint: bool | str | None = None):
        from loris.distributed.env import launched
        from loris.generation.engine import release_decode_steps
        from loris.trainers.parallel import parse_fsdp

        if launched() and parse_fsdp(self.args.fsdp, self.args.fsdp_config) is not None:
            raise ValueError(
                "GRPO with fsdp is not supported yet (rollouts would all-gather every block per decoded "
                "token): leave fsdp unset to train the adapters with DDP, one full model copy per GPU."
            )

        self._window_start = time.perf_counter()
        try:
            out = super().train(resume_from_checkpoint)
        finally:
            # Rollouts reuse one decode step (cache, CUDA graph) every step; training is over.
            release_decode_steps(self.model)
        if self._ranks.is_main:  # as the loss plot: one writer (two raced on the same temp file)
            self.save_reward_plot()
        return out

    def save_reward_plot(self) -> Path | None:
        """``output_dir/reward.png``: total reward (and each function's mean) against the step."""
        hist = [e for e in self.state.log_history if "reward" in e]
        if not hist:
            return None
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            warnings.warn("matplotlib is not installed: the reward curve was not drawn.", stacklevel=2)
            return None
        fig = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        steps = [e["step"] for e in hist]
        total = [e["reward"] for e in hist]
        ax.plot(steps, total, marker=".", label="reward (weighted sum)")
        if len(total) >= 10:  # one prompt's group per step is noisy: show the trend too
            windows = [total[max(0, i - 4) : i + 1] for i in range(len(total))]
            trend = [sum(w) / len(w) for w in windows]
            ax.plot(steps, trend, color="black", linewidth=2, label="reward, mean of the last 5 steps")
        for key in sorted({k for e in hist for k in e if k.startswith("rewards/") and k.endswith("/mean")}):
            ax.plot(steps, [e.get(key, float("nan")) for e in hist], alpha=0.6, label=key[8:-5])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mean reward")
        ax.set_title("GRPO reward")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(self.args.output_dir) / REWARD_PLOT
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".tmp-" + path.name)
        fig.savefig(tmp, format="png")
        tmp.replace(path)
        print(f"reward curve: {path}")
        return path
