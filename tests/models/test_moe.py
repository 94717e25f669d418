"""Qwen3-MoE, loris' native implementation, against transformers (the sparse block, logits, loss with
the load-balancing term and every gradient) and PEFT (expert adapters through ``target_parameters``)."""

from __future__ import annotations

import json

import pytest
import torch

from loris.kernels.activations import GATED_ACTIVATIONS
from loris.lora import ExpertLora, expert_lora_modules
from loris.models.decoder import LorisForCausalLM
from loris.models.moe import SparseMoE, moe_reference
from moe_checks import assert_4bit_experts_match, assert_adapter_grads_equal_peft, batch, load, lora


@pytest.fixture(scope="module")
def saved_moe(tmp_path_factory):
    """name → (transformers model, folder); "dense" has a dense MLP layer (mlp_only_layers)."""
    from tiny_models import make_moe_model, tiny_tokenizer

    cache: dict[str, tuple] = {}

    def get(name: str = "moe"):
        if name not in cache:
            kw = {"mlp_only_layers": [1]} if name == "dense" else {}
            model = make_moe_model(**kw)
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder)
            tiny_tokenizer().save_pretrained(folder)
            cache[name] = (model, folder)
        return cache[name]

    return get


def test_sparse_block_equals_transformers_and_the_expert_loop():
    from transformers import CONFIG_MAPPING
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    from tiny_models import BASE, QWEN3_MOE

    kw = {**BASE, **QWEN3_MOE}
    kw.pop("model_type")
    for norm in (True, False):
        torch.manual_seed(1)
        ref = Qwen3MoeSparseMoeBlock(CONFIG_MAPPING["qwen3_moe"](**{**kw, "norm_topk_prob": norm}))
        for p in ref.parameters():
            torch.nn.init.normal_(p, std=0.2)
        ours = SparseMoE(64, 32, 4, 2, norm, "silu")
        with torch.no_grad():
            ours.gate.weight.copy_(ref.gate.weight)
            ours.experts.gate_up_proj.copy_(ref.experts.gate_up_proj)
            ours.experts.down_proj.copy_(ref.experts.down_proj)
        x = torch.randn(3, 7, 64)
        with torch.no_grad():
            want = ref(x)
            torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-6)
            loop = moe_reference(
                x, ours.gate.weight, ours.experts.gate_up_proj, ours.experts.down_proj, 2, norm,
                GATED_ACTIVATIONS["silu"],
            )  # fmt: skip
            torch.testing.assert_close(loop, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_equal_transformers(side, saved_moe):
    hf, folder = saved_moe("dense")
    model, _ = load(folder)
    assert isinstance(model, LorisForCausalLM)
    assert isinstance(model.layers[0].mlp, SparseMoE) and not isinstance(model.layers[1].mlp, SparseMoE)
    ids, mask = batch(side=side)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        ref = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5)


def test_loss_with_load_balancing_term_and_gradients_equal_transformers(saved_moe):
    """Full fine-tuning gradients, the router's included (it gets the load-balancing gradient)."""
    hf, folder = saved_moe("moe")
    model, _ = load(folder, full_finetuning=True)
    model.train()
    hf = hf.train()
    ids, mask = batch(1)
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(ids, attention_mask=mask, labels=labels).loss
    out = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.aux_loss.item() > 0
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    out.loss.backward()
    theirs = dict(hf.named_parameters())
    pairs = {
        "layers.0.mlp.gate.weight": "model.layers.0.mlp.gate.weight",
        "layers.2.mlp.experts.gate_up_proj": "model.layers.2.mlp.experts.gate_up_proj",
        "layers.1.mlp.experts.down_proj": "model.layers.1.mlp.experts.down_proj",
        "layers.0.self_attn.q_proj.weight": "model.layers.0.self_attn.q_proj.weight",
    }
    ours = dict(model.named_parameters())
    for mine, ref in pairs.items():
        torch.testing.assert_close(ours[mine].grad, theirs[ref].grad, rtol=1e-4, atol=1e-7)
    hf.zero_grad()


def test_the_load_balancing_term_reaches_the_router(saved_moe):
    """Without the term the router gradient differs: the test above would catch a missing term."""
    _, folder = saved_moe("moe")
    grads = []
    for coef in (0.1, 0.0):
        model, _ = load(folder, full_finetuning=True)
        model.config.moe.router_aux_loss_coef = coef
        ids, mask = batch(1)
        model.train()(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads.append(model.layers[0].mlp.gate.weight.grad.clone())
    assert (grads[0] - grads[1]).abs().max() > 1e-6


def test_lora_step_equals_peft_with_the_same_adapter(saved_moe, tmp_path):
    """Attention LoRA and one adapter per expert (PEFT's target_parameters): same loss (with the
    load-balancing term), same gradient for every adapter tensor, under loris' checkpointing."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, folder = saved_moe("moe")
    model, _ = load(folder)
    model = lora(model)
    experts = dict(expert_lora_modules(model))
    assert len(experts) == 3 * 2
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    # gate_proj + up_proj: one rank-2r adapter on the fused weight, written as PEFT writes it
    assert config["rank_pattern"] == {".*\\.gate_up_proj": 8}
    assert config["alpha_pattern"] == {".*\\.gate_up_proj": 16}

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    peft = PeftModel.from_pretrained(hf, str(tmp_path / "adapter"), is_trainable=True).train()
    ids, mask = batch(2)
    labels = ids.masked_fill(mask == 0, -100)
    model.train()
    loss = model(ids, attention_mask=mask, labels=labels).loss
    ref = peft(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref.backward()
    assert_adapter_grads_equal_peft(model, peft)


def test_adapter_reloads_and_disabling_gives_the_base(saved_moe, tmp_path):
    hf, folder = saved_moe("moe")
    model, _ = load(folder)
    model = lora(model).eval()
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load(tmp_path / "adapter")
    assert all(isinstance(m, ExpertLora) for _, m in expert_lora_modules(again))
    ids, _ = batch(3)
    with torch.no_grad():
        tuned = model(ids).logits
        torch.testing.assert_close(again.eval()(ids).logits, tuned)
        with model.disable_adapter():
            base = model(ids).logits
        torch.testing.assert_close(base, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert (tuned - base).abs().max() > 1e-4


def test_merged_export_loads_in_transformers_with_equal_logits(saved_moe, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    _, folder = saved_moe("moe")
    model, tok = load(folder)
    model = lora(model).eval()
    out = model.save_pretrained_merged(tmp_path / "merged", tok, save_method="merged_32bit")  # exact
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.mlp.experts.3.up_proj.weight" in keys  # the Hub's per-expert layout
    assert not any("lora" in k for k in keys)
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids, _ = batch(4)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)


def test_loads_a_checkpoint_with_stacked_expert_names(saved_moe, tmp_path):
    """transformers 5's in-memory names (experts stacked) load as well as the per-expert ones."""
    import shutil

    from safetensors.torch import save_file

    hf, folder = saved_moe("moe")
    stacked = tmp_path / "stacked"
    shutil.copytree(folder, stacked)
    (stacked / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(stacked / "model.safetensors"))
    model, _ = load(stacked)
    ids, _ = batch(5)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_greedy_generation_equals_transformers(saved_moe):
    hf, folder = saved_moe("moe")
    model, _ = load(folder)
    ids, mask = batch(6, n=6, side="left")
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    ref = hf.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_router_logits=False,  # transformers' aux loss fails on a cached decode step
    )
    assert ours.tolist() == ref.tolist()


def test_4bit_experts_match_their_dequantized_weights(saved_moe, tmp_path):
    """QLoRA on the experts: NF4 stacks (one matrix per projection and layer), dequantized per use;
    the model equals a 16-bit one holding those dequantized weights, forward and LoRA gradients."""
    _, folder = saved_moe("moe")
    ids, mask = batch(7)
    assert_4bit_experts_match(folder, ids, mask, tmp_path)


def test_a_peft_made_adapter_loads_with_equal_logits(saved_moe, tmp_path):
    """PEFT's own adapter (gate/up/down named as on dense models) → loris: same logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _, folder = saved_moe("moe")
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    peft.save_pretrained(tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(folder)
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(config))
    model, _ = load(tmp_path / "peft")
    ids, _ = batch(8)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(ids).logits, peft.eval()(input_ids=ids).logits, rtol=1e-5, atol=1e-5
        )
