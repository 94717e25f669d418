"""Qwen3-MoE and gpt-oss to GGUF: llama.cpp's qwen3moe / gpt-oss layouts (stacked ``ffn_*_exps``, the
router as ``ffn_gate_inp``, expert counts in the metadata), read back with gguf-py and compared with
the merged weights. (tests/export/test_llamacpp.py runs the files in llama.cpp where it is installed.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loris import FastLanguageModel


def _tuned(folder, make_model):
    """A random tiny checkpoint of ``make_model`` with a BPE vocabulary, loaded with a random LoRA."""
    from tiny_models import tiny_bpe_tokenizer

    tok = tiny_bpe_tokenizer(["hello world, the quick brown fox"] * 20, vocab_size=280)
    hf = make_model(vocab_size=288, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tok = FastLanguageModel.from_pretrained(str(folder), load_in_4bit=False, dtype=torch.float32)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, init_lora_weights=False)
    return model.eval(), tok


def _read(path):
    """(metadata value getter, tensors by name) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in reader.fields.values()}

    def value(key):
        f = fields[key]
        return f.parts[f.data[0]].tolist()[0]

    value.fields = fields
    return value, {t.name: t for t in reader.tensors}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from tiny_models import make_moe_model

    return _tuned(tmp_path_factory.mktemp("moe"), make_moe_model)


def test_gguf_holds_llama_cpp_qwen3moe_tensors(tuned, tmp_path):
    model, tok = tuned
    (path,) = model.save_pretrained_gguf(tmp_path / "gguf", tok, quantization_method="f32")
    value, tensors = _read(path)
    fields = value.fields

    assert bytes(fields["general.architecture"].parts[-1]).decode() == "qwen3moe"
    assert value("qwen3moe.expert_count") == 4
    assert value("qwen3moe.expert_used_count") == 2
    assert value("qwen3moe.expert_feed_forward_length") == 32
    experts = model.layers[1].mlp.experts
    gate_up = experts.gate_up_proj.detach() + experts.gate_up_lora.delta_weight().detach()
    down = experts.down_proj.detach() + experts.down_lora.delta_weight().detach()
    for name, want in (
        ("blk.1.ffn_gate_exps.weight", gate_up[:, :32]),
        ("blk.1.ffn_up_exps.weight", gate_up[:, 32:]),
        ("blk.1.ffn_down_exps.weight", down),
        ("blk.1.ffn_gate_inp.weight", model.layers[1].mlp.gate.weight.detach()),
    ):
        got = np.asarray(tensors[name].data).reshape(tuple(want.shape))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
    assert "blk.0.attn_q_norm.weight" in tensors and "blk.2.ffn_down_exps.weight" in tensors
    assert not any("lora" in n for n in tensors)


def test_gguf_export_writes_the_qwen3_ollama_modelfile(tuned, tmp_path):
    """Qwen3-MoE chats in Qwen3's template: the Modelfile beside its GGUF carries that template's
    Ollama form (rendered against the Jinja template by tests/export/test_ollama.py)."""
    from loris.chat_templates import get_chat_template
    from loris.export.ollama import ollama_template

    model, tok = tuned
    tok = get_chat_template(tok, "qwen-3")
    (path,) = model.save_pretrained_gguf(tmp_path / "gguf", tok, quantization_method="q8_0")
    modelfile = (path.parent / "Modelfile").read_text()
    template, _, stops = ollama_template("qwen-3")
    assert f"FROM {path.name}" in modelfile.splitlines()[0]
    assert f'TEMPLATE """{template}"""' in modelfile
    assert all(f'PARAMETER stop "{s}"' in modelfile for s in stops)


@pytest.fixture(scope="module")
def tuned_gpt_oss(tmp_path_factory):
    from tiny_models import make_gpt_oss_model

    return _tuned(tmp_path_factory.mktemp("gpt_oss"), make_gpt_oss_model)


def test_gguf_holds_llama_cpp_gpt_oss_tensors(tuned_gpt_oss, tmp_path):
    """gpt-oss as llama.cpp's converter writes it: interleaved gate/up split into ffn_gate_exps /
    ffn_up_exps (experts, out, in) with their biases, the router with its bias, the sinks, the
    pre-FFN norm as post_attention_norm, expert counts and the sliding window in the metadata."""
    model, tok = tuned_gpt_oss
    (path,) = model.save_pretrained_gguf(tmp_path / "gguf", tok, quantization_method="f32")
    value, tensors = _read(path)
    assert bytes(value.fields["general.architecture"].parts[-1]).decode() == "gpt-oss"
    assert (value("gpt-oss.expert_count"), value("gpt-oss.expert_used_count")) == (4, 2)
    assert value("gpt-oss.expert_feed_forward_length") == 32
    assert value("gpt-oss.attention.sliding_window") == 4
    mlp = model.layers[1].mlp
    ex = mlp.experts
    gate_up = ex.gate_up_proj.detach().transpose(1, 2) + ex.gate_up_lora.delta_weight().detach()  # (E, 2I, H)
    down = ex.down_proj.detach().transpose(1, 2) + ex.down_lora.delta_weight().detach()
    for name, want in (
        ("blk.1.ffn_gate_exps.weight", gate_up[:, 0::2]),
        ("blk.1.ffn_up_exps.weight", gate_up[:, 1::2]),
        ("blk.1.ffn_down_exps.weight", down),
        ("blk.1.ffn_gate_exps.bias", ex.gate_up_proj_bias.detach()[:, 0::2]),
        ("blk.1.ffn_up_exps.bias", ex.gate_up_proj_bias.detach()[:, 1::2]),
        ("blk.1.ffn_down_exps.bias", ex.down_proj_bias.detach()),
        ("blk.1.ffn_gate_inp.weight", mlp.gate.weight.detach()),
        ("blk.1.ffn_gate_inp.bias", mlp.gate.bias.detach()),
        ("blk.1.attn_sinks.weight", model.layers[1].self_attn.sinks.detach()),
        ("blk.1.post_attention_norm.weight", model.layers[1].mlp_norm.weight.detach()),
    ):
        got = np.asarray(tensors[name].data).reshape(tuple(want.shape))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
    assert "blk.0.attn_q.bias" in tensors and "blk.2.attn_output.bias" in tensors
    assert not any("lora" in n for n in tensors)


def test_gguf_gpt_oss_needs_llama_cpps_layer_pattern(tuned_gpt_oss, tmp_path):
    model, tok = tuned_gpt_oss
    old = list(model.config.layer_types)
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    try:
        with pytest.raises(ValueError, match="every even layer"):
            model.save_pretrained_gguf(tmp_path / "gguf", tok, quantization_method="f32")
    finally:
        model.config.layer_types = old
