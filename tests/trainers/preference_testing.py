"""Shared pieces for the preference-trainer tests: the same tiny LoRA model as loris and as
transformers + PEFT (same base weights, same adapter), small preference rows, and gradient maps."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from loris import FastLanguageModel

# A chat template over words of the tiny vocabulary: w10 opens a user turn, w11 an answer.
TINY_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}w10 {{ m['content'] }} "
    "{% else %}w11 {{ m['content'] }} </s> {% endif %}{% endfor %}{% if add_generation_prompt %}w11 {% endif %}"
)


def words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(20, 150)}" for _ in range(n))


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Text pairs of unequal lengths; completions start with a space, as TRL's text format expects."""
    rng = random.Random(seed)
    return [
        {
            "prompt": words(rng, rng.randrange(2, 6)),
            "chosen": " " + words(rng, rng.randrange(1, 5)),
            "rejected": " " + words(rng, rng.randrange(1, 7)),
        }
        for _ in range(n)
    ]


def chat_pair_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": [{"role": "user", "content": words(rng, rng.randrange(2, 5))}],
            "chosen": [{"role": "assistant", "content": words(rng, rng.randrange(1, 4))}],
            "rejected": [{"role": "assistant", "content": words(rng, rng.randrange(1, 5))}],
        }
        for _ in range(n)
    ]


def unpaired_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": words(rng, rng.randrange(2, 6)),
            "completion": " " + words(rng, rng.randrange(1, 5)),
            "label": bool(i % 3 != 1),
        }
        for i in range(n)
    ]


def loris_lora(folder: Path, r: int = 8, alpha: int = 16):
    model, tok = FastLanguageModel.from_pretrained(
        str(folder), load_in_4bit=False, dtype=torch.float32, device_map="cpu"
    )
    model = FastLanguageModel.get_peft_model(model, r=r, lora_alpha=alpha)
    return model, tok


def randomize_adapter(model, seed: int, scale: float = 0.05) -> None:
    """Give every lora_B (and perturb every lora_A) so the adapter changes the model."""
    from loris.lora import lora_modules

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * scale)
            m.lora_A.add_(torch.randn(m.lora_A.shape, generator=gen) * 0.01)


def peft_twin(model, folder: Path, tmp: Path):
    """transformers + PEFT with loris' base weights (the saved folder) and its current adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model.save_pretrained(str(tmp))
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return PeftModel.from_pretrained(hf, str(tmp), is_trainable=True)


def copy_adapter_to_peft(model, peft_model) -> None:
    """Write loris' current adapter weights into the PEFT model's "default" adapter."""
    from loris.lora import lora_modules

    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, m in lora_modules(model):
            params[f"base_model.model.model.{name}.lora_A.default.weight"].copy_(m.lora_A)
            params[f"base_model.model.model.{name}.lora_B.default.weight"].copy_(m.lora_B)


def lora_grads(model) -> dict[str, torch.Tensor]:
    from loris.lora import lora_modules

    out = {}
    for name, m in lora_modules(model):
        out[f"{name}.lora_A"] = m.lora_A.grad.clone()
        out[f"{name}.lora_B"] = m.lora_B.grad.clone()
    return out


def peft_grads(peft_model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in peft_model.named_parameters():
        if ".default." in name and p.grad is not None:
            short = name.replace("base_model.model.model.", "").replace(".default.weight", "")
            out[short] = p.grad.clone()
    return out


def assert_grads_equal(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs) and ours
    nonzero = 0
    for k, g in ours.items():
        # fp32 sums run in another order: an element's error scales with the tensor's largest
        # entries (AlphaPO's exp transform makes gradients of ~300), not with the element itself
        atol = 1e-6 * max(1.0, float(theirs[k].abs().max()))
        torch.testing.assert_close(g, theirs[k], rtol=1e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        nonzero += int(bool(g.abs().sum() > 0))
    assert nonzero == len(ours)  # every adapter matrix gets a gradient: the test can fail


def trl_args(config_cls, out: Path, **kw):
    base = dict(output_dir=str(out), report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False,
                per_device_train_batch_size=4, logging_steps=1, save_strategy="no")  # fmt: skip
    return config_cls(**{**base, **kw})


def trl_step_metrics(trainer) -> dict[str, float]:
    """The metrics TRL's trainer recorded for its last compute_loss."""
    store = trainer._metrics["train"] if "train" in trainer._metrics else trainer._stored_metrics["train"]
    return {k: v[-1] for k, v in store.items() if v}


class TorchLogProbs:
    """Stand-in for TRL's fused LM-head kernel (`trl.kernels.ChunkedLogProbFunction`), which is Triton
    only and does not run under the CPU interpreter: the same outputs from full logits in plain torch.
    Only this log-softmax-and-gather is replaced; TRL's batching, reference choice, losses and metrics
    are its own."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
              outputs=("log_probs",)):  # fmt: skip
        logits = hidden @ weight.t()
        if bias is not None:
            logits = logits + bias
        logits = logits.float() * logit_scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logits = logits / temperature
        lse = torch.logsumexp(logits, -1)
        logp = logits.gather(-1, targets[:, None])[:, 0] - lse
        probs = torch.softmax(logits, -1)
        entropy = lse - (probs * logits).sum(-1) if "entropy" in outputs else None
        sq = torch.log((probs.detach() ** 2).sum(-1)) if "log_sum_sq_probs" in outputs else None
        mean = logits.detach().mean(-1) if "mean_logits" in outputs else None
        top1 = (logits.detach().argmax(-1) == targets) if "is_top1" in outputs else None
        return logp, entropy, sq, mean, top1
