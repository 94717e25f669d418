"""What each spawned rank runs in tests/distributed (top-level functions, so spawn can pickle them).

Every worker writes its results to ``out/rank<r>.pt`` for the test process to compare."""

from __future__ import annotations

from pathlib import Path

import torch


def lora_model(folder: str, gradient_checkpointing: bool | str = False, load_in_4bit: bool = False):
    from loris import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(
        folder, load_in_4bit=load_in_4bit, dtype=torch.float32, device_map="cpu"
    )
    model = FastLanguageModel.get_peft_model(
        model, r=8, lora_alpha=16, use_gradient_checkpointing=gradient_checkpointing
    )
    return model, tok


def full_model(folder: str):
    from loris import FastLanguageModel

    return FastLanguageModel.from_pretrained(
        folder, load_in_4bit=False, dtype=torch.float32, device_map="cpu", full_finetuning=True
    )


def trainable(model) -> dict[str, torch.Tensor]:
    """Trainable weights by name, as full plain tensors (FSDP2's DTensors gathered)."""
    from loris.distributed.wrap import local_value

    return {n: local_value(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}


class _StopMixin:
    def on_step_end(self, state, logs) -> None:
        super().on_step_end(state, logs)
        if state.global_step == self.stop_at:
            state.should_stop = True  # as a crash would, after the checkpoint of this step


def Stop(stop_at):  # noqa: N802 - a Record that stops the run at step ``stop_at``
    from trainer_testing import Record

    cls = type("StopRecord", (_StopMixin, Record), {})
    rec = cls()
    rec.stop_at = stop_at
    return rec


def sft_train(folder: str, rows: list, out: str, kind: str, settings: dict, resume=None) -> None:
    """Train with SFTTrainer; save the per-step logs and the final trainable weights of this rank."""
    from loris import SFTConfig, SFTTrainer
    from loris.distributed import rank

    settings = dict(settings)
    gc = settings.pop("use_gradient_checkpointing", False)
    stop_at = settings.pop("stop_at", None)
    model, tok = lora_model(folder, gc, kind == "qlora") if kind != "full" else full_model(folder)
    rec = Stop(stop_at)
    base = dict(output_dir=out, logging_steps=1, save_strategy="no", disable_tqdm=True, optim="sgd",
                max_grad_norm=0.0, lr_scheduler_type="constant")  # fmt: skip
    trainer = SFTTrainer(model, SFTConfig(**{**base, **settings}), train_dataset=rows, processing_class=tok,
                         callbacks=[rec])  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    steps = {k: {"loss": v["loss"], "grad_norm": v["grad_norm"]} for k, v in rec.steps.items()}
    result = {"steps": steps, "weights": trainable(model), "mode": trainer._ranks.mode}
    torch.save(result, Path(out) / f"rank{rank()}.pt")


def grpo_rollouts(folder: str, out: str, settings: dict) -> None:
    """Train GRPO for a few steps; keep every rollout's completion rows, rewards and advantages."""
    from loris import GRPOConfig, GRPOTrainer
    from loris.distributed import rank

    class Recording(GRPOTrainer):
        rollouts: list = []

        def _generate_and_score(self, rows):
            r = super()._generate_and_score(rows)
            comp = r.tensors["completion_ids"] * r.tensors["completion_mask"]
            self.rollouts.append(
                {"rows": list(r.rows), "completions": comp.cpu(), "adv": r.tensors["advantages"].cpu()}
            )
            return r

    model, tok = lora_model(folder)
    data = [{"prompt": f"w{5 + i} w{9 + i} w{20 + i}"} for i in range(8)]
    base = dict(output_dir=out, per_device_train_batch_size=2, num_generations=4, max_completion_length=4,
                max_steps=2, learning_rate=0.05, logging_steps=1, save_strategy="no", disable_tqdm=True,
                temperature=1.5)  # fmt: skip
    trainer = Recording(model=model, reward_funcs=[reward_w7, reward_len], args=GRPOConfig(**{**base, **settings}),
                        train_dataset=data, processing_class=tok)  # fmt: skip
    trainer.train()
    torch.save({"rollouts": trainer.rollouts, "weights": trainable(model)}, Path(out) / f"rank{rank()}.pt")


def reward_w7(prompts, completions, completion_ids, **_):
    """A reward of the completion's token ids alone, so the test can recompute it from them."""
    return [float(sum(1 for t in ids if t % 3 == 0)) for ids in completion_ids]


def reward_len(prompts, completions, completion_ids, **_):
    return [float(len(ids)) / 4 for ids in completion_ids]


def lone_collective(out: str) -> None:
    """Rank 1 leaves at once; rank 0's all-reduce then fails, and says which rank and what to check."""
    from loris.distributed import RankFailure, env

    env.init(timeout_s=3)
    if env.rank() == 1:
        return
    try:
        env.reduce_sum(1.0)
        message = "no error"
    except RankFailure as exc:
        message = str(exc)
    Path(out).write_text(message)
