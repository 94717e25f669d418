"""Packed q/k/v and gate/up weights: loading packs them, the views behave as separate weights, and
the packing ends quietly (no stale copy) when the weights stop lying back to back."""

from __future__ import annotations

import torch

from loris import FastLanguageModel
from loris.models.packing import pack, packed_view


def _linears(sizes, bias=False):
    g = torch.Generator().manual_seed(0)
    out = []
    for n in sizes:
        lin = torch.nn.Linear(8, n, bias=bias).requires_grad_(False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, 8, generator=g))
            if bias:
                lin.bias.copy_(torch.randn(n, generator=g))
        out.append(lin)
    return out


def test_pack_keeps_every_weight_and_stacks_them():
    lins = _linears([6, 2, 2], bias=True)
    before = [(lin.weight.clone(), lin.bias.clone()) for lin in lins]
    assert pack(lins)
    weight, bias = packed_view(lins)
    assert weight.shape == (10, 8) and bias.shape == (10,)
    torch.testing.assert_close(weight, torch.cat([w for w, _ in before]), rtol=0, atol=0)
    torch.testing.assert_close(bias, torch.cat([b for _, b in before]), rtol=0, atol=0)
    for lin, (w, b) in zip(lins, before, strict=True):
        torch.testing.assert_close(lin.weight, w, rtol=0, atol=0)
        torch.testing.assert_close(lin.bias, b, rtol=0, atol=0)
    with torch.no_grad():  # writes through a projection's weight reach the stacked view (merges do this)
        lins[1].weight += 1.0
    torch.testing.assert_close(packed_view(lins)[0][6:8], before[1][0] + 1.0, rtol=0, atol=0)


def test_packing_ends_when_weights_move_or_train():
    lins = _linears([4, 4])
    assert pack(lins)
    lins[1].weight = torch.nn.Parameter(lins[1].weight.clone(), requires_grad=False)
    assert packed_view(lins) is None
    lins = _linears([4, 4])
    pack(lins)
    lins[0].weight.requires_grad_(True)  # a trainable base is never used through the stacked view
    assert packed_view(lins) is None
    mixed = _linears([4, 4], bias=False)
    mixed[1].bias = torch.nn.Parameter(torch.zeros(4), requires_grad=False)
    assert not pack(mixed)


def test_loading_packs_16bit_projections(saved_family):
    _, folder = saved_family("qwen2")  # q/k/v with biases
    model, _ = FastLanguageModel.from_pretrained(str(folder), load_in_4bit=False)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    w, b = packed_view([attn.q_proj, attn.k_proj, attn.v_proj])
    assert w.shape[0] == attn.q_proj.out_features + 2 * attn.k_proj.out_features and b is not None
    assert packed_view([mlp.gate_proj, mlp.up_proj]) is not None
    model = FastLanguageModel.get_peft_model(model, r=4)  # LoRA wraps the same views
    assert packed_view([attn.q_proj.base, attn.k_proj.base, attn.v_proj.base]) is not None


def test_packing_can_be_switched_off(saved_family, monkeypatch):
    monkeypatch.setenv("LORIS_PACK_PROJECTIONS", "0")
    _, folder = saved_family("llama")
    model, _ = FastLanguageModel.from_pretrained(str(folder), load_in_4bit=False)
    attn = model.layers[0].self_attn
    assert packed_view([attn.q_proj, attn.k_proj, attn.v_proj]) is None
