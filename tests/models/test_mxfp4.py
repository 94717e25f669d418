"""MXFP4 expert weights (gpt-oss Hub checkpoints): loris' dequantizer against transformers' own
(transformers.integrations.mxfp4, the oracle) on random packed data, and a tiny gpt-oss checkpoint
written in the packed form loading with transformers' logits."""

from __future__ import annotations

import json

import pytest
import torch

from loris.models.mxfp4 import dequantize_expert_stack, dequantize_mxfp4, dequantize_mxfp4_tensors


def _packed(experts: int, rows: int, cols: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (experts, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(117, 132, (experts, rows, cols // 32), generator=g, dtype=torch.uint8)
    return blocks, scales


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantizer_equals_transformers(dtype):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    blocks, scales = _packed(3, 24, 96)
    want = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # (experts, in, out)
    got = dequantize_expert_stack(blocks, scales, dtype)
    assert got.shape == (3, 96, 24) and got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.abs().max() > 1 and (got == 0).float().mean() < 0.2


def test_known_codes():
    """One block by hand: codes 0x21 → [0.5, 1.0] (low nibble first), sign bit, scale 2^(130-127)."""
    blocks = torch.zeros(1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0] = 0x21
    blocks[0, 0, 1] = 0xF9  # low 9: -0.5, high 15: -6
    scales = torch.tensor([[130]], dtype=torch.uint8)
    out = dequantize_mxfp4(blocks, scales, torch.float32)
    assert out.shape == (1, 32)
    assert out[0, :4].tolist() == [4.0, 8.0, -4.0, -48.0]
    assert out[0, 4:].abs().sum() == 0


def test_stream_pairs_blocks_and_scales_in_any_order():
    blocks, scales = _packed(2, 8, 32)
    other = torch.ones(3)
    stream = [("a_scales", scales), ("x", other), ("a_blocks", blocks)]
    out = dict(dequantize_mxfp4_tensors(iter(stream), torch.float32))
    assert set(out) == {"a", "x"} and out["x"] is other
    torch.testing.assert_close(out["a"], dequantize_expert_stack(blocks, scales, torch.float32))
    with pytest.raises(ValueError, match="incomplete"):
        list(dequantize_mxfp4_tensors(iter([("b_blocks", blocks)]), torch.float32))


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(transformers model holding transformers' dequantized experts, folder of the packed checkpoint)."""
    return _write_packed(tmp_path_factory.mktemp("packed"))


def _write_packed(tmp_path):
    """Experts written as *_blocks / *_scales with an mxfp4 quantization_config (as the Hub's
    gpt-oss): loris' model equals transformers' model holding transformers' dequantized experts."""
    from safetensors.torch import save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from tiny_models import make_gpt_oss_model, tiny_tokenizer

    hf = make_gpt_oss_model(seed=3)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    for name, param in hf.named_parameters():
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            continue
        e, inp, out = param.shape
        blocks, scales = _packed(e, out, inp, seed=len(name) + int(name.split(".")[2]))
        scales = scales - 8  # weights of size ~0.1-1
        with torch.no_grad():
            param.copy_(convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))
        del state[name]
        state[name + "_blocks"], state[name + "_scales"] = blocks, scales
    hf.config.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn"],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(state, str(tmp_path / "model.safetensors"))
    tiny_tokenizer().save_pretrained(tmp_path)
    return hf, tmp_path


def test_a_packed_gpt_oss_checkpoint_loads_with_transformers_logits(packed):
    from loris import FastLanguageModel

    hf, folder = packed
    model, _ = FastLanguageModel.from_pretrained(
        str(folder), load_in_4bit=False, dtype=torch.float32, device_map="cpu"
    )
    torch.testing.assert_close(
        model.layers[1].mlp.experts.down_proj, hf.model.layers[1].mlp.experts.down_proj, rtol=0, atol=0
    )
    ids = torch.randint(4, 160, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_a_packed_checkpoint_loads_with_4bit_experts(packed):
    """load_in_4bit on an MXFP4 checkpoint: each expert stack is dequantized, then stored as NF4."""
    from loris import FastLanguageModel
    from loris.quant import Linear4bit

    hf, folder = packed
    model, _ = FastLanguageModel.from_pretrained(str(folder), load_in_4bit=True, dtype=torch.float32)
    ex = model.layers[0].mlp.experts
    assert isinstance(ex.gate_up_proj_q, Linear4bit) and ex.gate_up_proj is None
    want = hf.model.layers[0].mlp.experts.gate_up_proj
    got = ex.weight("gate_up_proj", torch.float32)
    assert ((got - want).norm() / want.norm()).item() < 0.15  # NF4's error on the MXFP4 values
