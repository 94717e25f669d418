"""Qwen3-MoE to GGUF: llama.cpp's qwen3moe layout (stacked ``ffn_*_exps``, the router as
``ffn_gate_inp``, expert counts in the metadata), read back with gguf-py and compared with the
merged weights. (tests/export/test_llamacpp.py runs the file in llama.cpp where it is installed.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loris import FastLanguageModel


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from tiny_models import make_moe_model, tiny_bpe_tokenizer

    folder = tmp_path_factory.mktemp("moe")
    tok = tiny_bpe_tokenizer(["hello world, the quick brown fox"] * 20, vocab_size=280)
    hf = make_moe_model(vocab_size=288, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tok = FastLanguageModel.from_pretrained(str(folder), load_in_4bit=False, dtype=torch.float32)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, init_lora_weights=False)
    return model.eval(), tok


def test_gguf_holds_llama_cpp_qwen3moe_tensors(tuned, tmp_path):
    import gguf

    model, tok = tuned
    (path,) = model.save_pretrained_gguf(tmp_path / "gguf", tok, quantization_method="f32")
    reader = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in reader.fields.values()}

    def value(key):
        f = fields[key]
        return f.parts[f.data[0]].tolist()[0]

    assert bytes(fields["general.architecture"].parts[-1]).decode() == "qwen3moe"
    assert value("qwen3moe.expert_count") == 4
    assert value("qwen3moe.expert_used_count") == 2
    assert value("qwen3moe.expert_feed_forward_length") == 32
    tensors = {t.name: t for t in reader.tensors}
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
