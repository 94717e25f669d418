"""Hub ids resolve through huggingface_hub's cache (no network needed once a model is cached)."""

from __future__ import annotations

import shutil

import torch

from loris import FastLanguageModel


def test_hub_id_loads_from_the_hf_cache_offline(saved_family, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    hf, folder = saved_family("qwen3")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny-qwen3"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    model, tok = FastLanguageModel.from_pretrained(
        "acme/tiny-qwen3", load_in_4bit=False, dtype=torch.float32, device_map="cpu", revision="main"
    )
    ids = torch.randint(3, 160, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4
    assert tok.eos_token == "</s>"
