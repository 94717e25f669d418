"""What loris writes gets the mode a plain open()/mkdir() would give: 0o666 / 0o777 less the umask.

tempfile's folders (0o700) and files (0o600) ignore the umask and a rename keeps their mode, so an
atomic writer that forgets this leaves exports only their owner can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from loris import FastLanguageModel
from loris.export.atomic import staging_dir, temp_file_for
from loris.export.gguf import save_gguf  # tokenizer=None: no vocabulary needed here
from loris.file_modes import current_umask


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask-{m:03o}")
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def model(saved_family):
    _, folder = saved_family("llama")
    m, _ = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    return FastLanguageModel.get_peft_model(m, r=4, lora_alpha=8, use_gradient_checkpointing=False).eval()


def _modes(root: Path) -> dict[str, int]:
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in paths}


def _expect(root: Path, mask: int) -> None:
    modes = _modes(root)
    assert len(modes) >= 1
    for name, mode in modes.items():
        want = (0o777 if (root.parent / name).is_dir() else 0o666) & ~mask
        assert mode == want, (
            f"{name}: mode {mode:o}, a plain open()/mkdir() under umask {mask:03o} gives {want:o}"
        )


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_staging_folder_and_temp_file_modes(umask, tmp_path):
    with staging_dir(tmp_path / "out") as tmp:
        _expect(tmp, umask)
    tmp_file = temp_file_for(tmp_path / "a.gguf")
    _expect(tmp_file, umask)


def test_merged_export_adapter_and_gguf_modes(model, umask, tmp_path):
    merged = model.save_pretrained_merged(tmp_path / "merged", save_method="merged_16bit")
    _expect(Path(merged), umask)
    again = model.save_pretrained_merged(tmp_path / "merged", save_method="merged_16bit")  # into a folder
    _expect(Path(again), umask)
    adapter = model.save_pretrained(tmp_path / "adapter")
    _expect(Path(adapter), umask)
    for path in save_gguf(model, tmp_path / "gguf", None, quantization_method=["f16"]):
        _expect(Path(path), umask)
    _expect(tmp_path / "gguf", umask)


def test_training_checkpoint_modes(model, umask, tmp_path):
    from loris.trainers.checkpoint import save_checkpoint

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    out = save_checkpoint(tmp_path / "run" / "checkpoint-1", model, opt, sched, {"global_step": 1}, "a: 1\n")
    _expect(out, umask)
    _expect(tmp_path / "run", umask)
