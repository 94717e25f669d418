"""`loris.export.sharded`: the plain copy rank 0 exports from after gathering an FSDP2 model's weights.

The gathering itself runs under 2 ranks in tests/distributed/test_fsdp_export.py; here a single
process checks that a copy rebuilt from a model's full state dict exports the very same bytes
(merged safetensors, GGUF, PEFT adapters), tied embeddings included, and that quantized bases are
refused."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris.export import pipeline
from loris.export.sharded import check_sharded, unsharded_copy


def _full(saved_family, family):
    _, folder = saved_family(family)
    model, tok = FastLanguageModel.from_pretrained(
        str(folder), dtype=torch.float32, load_in_4bit=False, full_finetuning=True
    )
    with torch.no_grad():  # trained weights: not the ones in the source folder
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
    return model, tok


def _files(folder) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("family", ["llama", "llama3.2"])  # llama3.2: tied embeddings
@pytest.mark.parametrize("drop_tied", [False, True])
def test_copy_exports_the_same_bytes(saved_family, tmp_path, family, drop_tied):
    model, tok = _full(saved_family, family)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if drop_tied and model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    copy = unsharded_copy(model, state)
    assert type(copy) is type(model) and copy.state is model.state
    assert copy.embed_tokens.weight.data_ptr() == state["embed_tokens.weight"].data_ptr()  # used in place
    if model.config.tie_word_embeddings:
        assert copy.lm_head.weight is copy.embed_tokens.weight
    # GGUF without a tokenizer: the tiny WordLevel one has no GGUF form; the tensors are what differ.
    for what, t, kw in (("merged_16bit", tok, {}), ("gguf", None, {"quantization_method": "q8_0"})):
        pipeline.write(model, t, what, tmp_path / "ref" / what, **kw)
        pipeline.write(copy, t, what, tmp_path / "copy" / what, **kw)
        ref, got = _files(tmp_path / "ref" / what), _files(tmp_path / "copy" / what)
        assert ref and got == ref, what


def test_a_state_that_does_not_fit_says_so(saved_family):
    model, _ = _full(saved_family, "llama")
    state = dict(model.state_dict())
    state.pop("norm.weight")
    with pytest.raises(RuntimeError, match=r"missing: \['norm.weight'\]"):
        unsharded_copy(model, state)


def test_quantized_models_are_refused_with_what_to_do(saved_family):
    full, _ = _full(saved_family, "llama")
    check_sharded(full)  # full fine-tuning: supported
    _, folder = saved_family("llama")
    base, _ = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(base, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    with pytest.raises(ValueError, match="quantized .* sharded with FSDP2.*QLoRA with DDP"):
        check_sharded(model)


@pytest.mark.parametrize("family,to_save", [("llama", None), ("llama3.2", ["lm_head"])])
def test_lora_copy_exports_the_same_adapter_and_merge(saved_family, tmp_path, family, to_save):
    """LoRA over a plain base (adapters trained: B nonzero); llama3.2 + modules_to_save: the tied
    lm_head was untied and trained on its own, and stays untied in the copy."""
    _, folder = saved_family(family)
    base, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        base, r=4, lora_alpha=8, use_gradient_checkpointing=False, modules_to_save=to_save
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p), alpha=0.01)
    check_sharded(model)
    copy = unsharded_copy(model, {k: v.detach().clone() for k, v in model.state_dict().items()})
    assert (copy.lm_head.weight is copy.embed_tokens.weight) == (
        model.lm_head.weight is model.embed_tokens.weight
    )
    for what in ("adapter", "merged_16bit"):
        pipeline.write(model, tok, what, tmp_path / "ref" / what)
        pipeline.write(copy, tok, what, tmp_path / "copy" / what)
        ref, got = _files(tmp_path / "ref" / what), _files(tmp_path / "copy" / what)
        assert ref and got == ref, what
