"""A single-GPU style training script with nothing distributed in it (launched by the tests with
torchrun or accelerate): python unsloth_style_train.py MODEL_FOLDER OUT_FOLDER"""

import sys

import torch

from loris import FastLanguageModel, SFTConfig, SFTTrainer

model_folder, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
model, tokenizer = FastLanguageModel.from_pretrained(model_folder, max_seq_length=64, dtype=torch.float32,
                                                     load_in_4bit=False)  # fmt: skip
model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=True)
rows = [{"text": " ".join(f"w{4 + (i * 7 + j) % 90}" for j in range(5 + i % 4))} for i in range(8)]
trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows,
                     args=SFTConfig(output_dir=out, per_device_train_batch_size=2, max_steps=2, logging_steps=1,
                                    save_strategy="no", disable_tqdm=True, report_to="none"))  # fmt: skip
trainer.train()
model.save_pretrained(f"{out}/lora", tokenizer)
