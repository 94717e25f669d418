"""The declared model state survives DistributedDataParallel: DDP hides the wrapped module's
attributes, so anything the trainers read through `model_state` (tokenizer, max_seq_length, adapter
settings) must come from the unwrapped model. One process, gloo, CPU."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from trainer_testing import token_rows

from loris import FastLanguageModel, SFTConfig, SFTTrainer
from loris.models.state import model_state, unwrap_model


@pytest.fixture
def process_group(tmp_path):
    """A world of one (gloo, file store), torn down after the test."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this interpreter")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_sft_step_and_save_through_ddp(process_group, saved_family, tmp_path):
    folder = saved_family("llama")[1]
    model, tok = FastLanguageModel.from_pretrained(
        str(folder), max_seq_length=48, load_in_4bit=False, dtype=torch.float32, device_map="cpu"
    )
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=False)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    with pytest.raises(AttributeError):
        ddp.state  # noqa: B018 - what a wrapper does to the model's own attributes
    assert unwrap_model(ddp) is model
    state = model_state(ddp)
    assert state is model.state and state.tokenizer is tok and state.max_seq_length == 48
    assert state.peft_config is model.peft_config is not None

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
    )
    trainer = SFTTrainer(model=ddp, args=args, train_dataset=token_rows([12, 30, 40, 9]))
    assert trainer.processing_class is tok  # found through the wrapper
    assert trainer.args.max_length == 48
    trainer.train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "one SFT step through DDP changed no adapter weight"

    saved = unwrap_model(ddp).save_pretrained(tmp_path / "adapter")
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder) and config["r"] == 8
    reloaded, _ = FastLanguageModel.from_pretrained(
        str(saved), load_in_4bit=False, dtype=torch.float32, device_map="cpu"
    )
    mine = {n: p for n, p in model.named_parameters() if p.requires_grad}
    theirs = {n: p for n, p in reloaded.named_parameters() if p.requires_grad}
    assert mine.keys() == theirs.keys()
    for name, p in mine.items():
        torch.testing.assert_close(theirs[name], p, rtol=0, atol=0, msg=name)
