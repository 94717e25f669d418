"""The face's save/push methods and ``loris export`` all write through `loris.export.pipeline`, and a
push uploads exactly the folder the pipeline wrote (card included), after the check when asked."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris.export import hub, pipeline


@pytest.fixture
def model_and_tok(saved_family):
    _, folder = saved_family("llama")
    model, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    return FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False), tok


@pytest.fixture
def recorded(monkeypatch):
    """Every pipeline.write call's ``what``, and every upload's (repo, files in the folder)."""
    writes, uploads, real_write = [], [], pipeline.write

    def write(model, tokenizer, what, folder, **kw):
        writes.append(what)
        return real_write(model, tokenizer, what, folder, **kw)

    def upload_folder(folder, repo_id, token, private, message):
        uploads.append((repo_id, sorted(p.name for p in folder.iterdir()), message))

    monkeypatch.setattr(pipeline, "write", write)
    monkeypatch.setattr(hub, "check_can_upload", lambda repo_id, token: "hf_test")
    monkeypatch.setattr(hub, "upload_folder", upload_folder)
    return writes, uploads


def test_face_methods_and_cli_share_the_pipeline(model_and_tok, recorded, tmp_path):
    from loris.cli import _write_artifacts

    model, tok = model_and_tok
    writes, uploads = recorded
    adapter = model.save_pretrained(tmp_path / "adapter", tok)
    merged = model.save_pretrained_merged(tmp_path / "merged", tok, save_method="merged_16bit")
    assert (adapter / "adapter_config.json").is_file() and (merged / "model.safetensors").is_file()
    model.push_to_hub("me/tiny-lora", tok)
    model.push_to_hub_merged("me/tiny", tok, save_method="merged_16bit")
    written = _write_artifacts(model, tok, ["merged_16bit"], [], tmp_path / "out", "tiny")
    assert writes == ["adapter", "merged_16bit", "adapter", "merged_16bit", "merged_16bit"]
    assert written == [("merged_16bit", tmp_path / "out" / "merged_16bit")]
    (repo, files, message), (repo2, files2, message2) = uploads
    assert repo == "me/tiny-lora" and {"adapter_config.json", "README.md"} <= set(files)
    assert message == "Upload LoRA adapter trained with loris"
    assert repo2 == "me/tiny" and {"model.safetensors", "config.json", "README.md"} <= set(files2)
    assert message2 == "Upload merged_16bit model trained with loris"


def test_a_failed_check_uploads_nothing(model_and_tok, recorded, monkeypatch):
    from loris.export.validate import ExportValidationError

    def mismatch(model, tokenizer, written):
        raise ExportValidationError([])

    monkeypatch.setattr(pipeline, "check", mismatch)
    model, tok = model_and_tok
    with pytest.raises(ExportValidationError):
        model.push_to_hub_merged("me/tiny", tok, validate=True)
    assert recorded[1] == []
    model.push_to_hub_merged("me/tiny", tok)  # not asked to validate: no check, uploaded
    assert [repo for repo, *_ in recorded[1]] == ["me/tiny"]


def test_repo_suffixes_of_loris_export():
    assert pipeline.REPO_SUFFIXES == {
        "lora": "",
        "merged_16bit": "",
        "merged_32bit": "-fp32",
        "merged_4bit_forced": "-bnb-4bit",
        "gguf": "-GGUF",
    }
