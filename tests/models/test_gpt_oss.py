"""gpt-oss, loris' native implementation, against transformers' GptOssForCausalLM (eager attention:
sinks and the sliding window; the sparse block; logits; loss with the load-balancing term and the
full fine-tuning gradients) and PEFT 0.21 (expert adapters through ``target_parameters``)."""

from __future__ import annotations

import json

import pytest
import torch

import moe_checks
from loris.lora import ExpertLora, expert_lora_modules, lora_modules
from loris.models.decoder import LorisForCausalLM
from loris.models.families.gpt_oss import SWIGLU_ALPHA, SWIGLU_LIMIT
from loris.models.moe import SparseMoE, clamped_swiglu, moe_reference
from moe_checks import assert_4bit_experts_match, assert_adapter_grads_equal_peft, load, lora


@pytest.fixture(scope="module")
def saved_gpt_oss(tmp_path_factory):
    """(transformers model, folder) of a tiny random gpt-oss saved by transformers."""
    from tiny_models import make_gpt_oss_model, tiny_tokenizer

    model = make_gpt_oss_model()
    folder = tmp_path_factory.mktemp("gpt_oss")
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model, folder


def batch(seed=0, b=2, n=11, side="right"):
    """Rows longer than the sliding window (4); row 0 padded on ``side``."""
    return moe_checks.batch(seed, b, n, side)


def test_sparse_block_equals_transformers_and_the_expert_loop():
    from transformers import CONFIG_MAPPING
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    from tiny_models import BASE, GPT_OSS, make_gpt_oss_model

    kw = {**BASE, **GPT_OSS}
    kw.pop("model_type"), kw.pop("attn_implementation")
    torch.manual_seed(1)
    ref = GptOssMLP(CONFIG_MAPPING["gpt_oss"](**kw))
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model = make_gpt_oss_model()
    moe = model.config  # the same options as a loaded model gets
    from loris.models.config import ModelConfig

    cfg = ModelConfig.from_hf(moe)
    ours = SparseMoE(64, 32, 4, 2, True, "silu", cfg.moe)
    with torch.no_grad():
        ours.gate.weight.copy_(ref.router.weight)
        ours.gate.bias.copy_(ref.router.bias)
        for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
            getattr(ours.experts, name).copy_(getattr(ref.experts, name))
    x = torch.randn(3, 7, 64) * 3  # large enough for the clamps to act
    with torch.no_grad():
        want = ref(x)[0]
        torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)
        ex = ours.experts
        loop = moe_reference(
            x, ours.gate.weight, ex.gate_up_proj.transpose(1, 2), ex.down_proj.transpose(1, 2), 2, True,
            lambda g, u: clamped_swiglu(g, u, SWIGLU_ALPHA, SWIGLU_LIMIT),
            router_bias=ours.gate.bias, gate_up_bias=ex.gate_up_proj_bias, down_bias=ex.down_proj_bias,
            interleaved=True,
        )  # fmt: skip
        torch.testing.assert_close(loop, want, rtol=1e-5, atol=1e-5)
        h = x.reshape(-1, 64) @ ex.gate_up_proj[0]
        assert (h[:, 0::2] > SWIGLU_LIMIT).any() or (h[:, 1::2].abs() > SWIGLU_LIMIT).any()


def test_the_published_gpt_oss_20b_config_parses():
    """openai/gpt-oss-20b's config.json as published (transformers 4.55 names: rope_scaling,
    rope_theta, extra keys such as swiglu_limit, an mxfp4 quantization_config)."""
    from loris.models.config import ModelConfig

    raw = {
        "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
        "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
        "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
        "output_router_logits": False, "pad_token_id": 199999, "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
            "rope_type": "yarn", "truncate": False,
        },
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "use_cache": True, "vocab_size": 201088,
    }  # fmt: skip
    cfg = ModelConfig.from_hf(raw)
    rope, moe = cfg.rope, cfg.moe
    assert (rope.rope_type, rope.theta, rope.factor, rope.truncate) == ("yarn", 150000.0, 32.0, False)
    assert rope.original_max_position_embeddings == 4096
    assert (moe.num_experts, moe.top_k, moe.intermediate_size, moe.router_aux_loss_coef) == (32, 4, 2880, 0.9)
    assert cfg.attn_sinks and cfg.qkv_bias and cfg.o_bias and cfg.sliding_window == 128
    assert [cfg.is_sliding(i) for i in range(4)] == [True, False, True, False]


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_equal_transformers(side, saved_gpt_oss):
    hf, folder = saved_gpt_oss
    model, _ = load(folder)
    assert isinstance(model, LorisForCausalLM)
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert model.config.rope.rope_type == "yarn" and not model.config.rope.truncate
    assert all(isinstance(b.mlp, SparseMoE) for b in model.layers)
    ids, mask = batch(side=side)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        ref = hf(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(model(ids).logits, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5)


def test_sinks_and_window_change_the_logits(saved_gpt_oss):
    """The parity above would not see the sinks or the window if they did nothing here."""
    _, folder = saved_gpt_oss
    model, _ = load(folder)
    ids, _ = batch(1)
    with torch.no_grad():
        base = model(ids).logits
        for block in model.layers:
            block.self_attn.sinks.fill_(-1e4)
        assert (model(ids).logits - base).abs().max() > 1e-3
    model, _ = load(folder)
    with torch.no_grad():
        for block in model.layers:
            block.self_attn.sliding_window = None
        model.config.sliding_window = None
        assert (model(ids).logits - base).abs().max() > 1e-3


def test_loss_with_load_balancing_term_and_gradients_equal_transformers(saved_gpt_oss):
    """Full fine-tuning gradients: sinks, router (with the load-balancing gradient) and biases."""
    hf, folder = saved_gpt_oss
    model, _ = load(folder, full_finetuning=True)
    model.train()
    hf = hf.train()
    ids, mask = batch(2)
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(ids, attention_mask=mask, labels=labels).loss
    out = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.aux_loss.item() > 0
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    out.loss.backward()
    theirs = dict(hf.named_parameters())
    ours = dict(model.named_parameters())
    pairs = {
        "layers.0.self_attn.sinks": "model.layers.0.self_attn.sinks",
        "layers.1.self_attn.q_proj.bias": "model.layers.1.self_attn.q_proj.bias",
        "layers.0.mlp.gate.weight": "model.layers.0.mlp.router.weight",
        "layers.2.mlp.gate.bias": "model.layers.2.mlp.router.bias",
        "layers.2.mlp.experts.gate_up_proj": "model.layers.2.mlp.experts.gate_up_proj",
        "layers.1.mlp.experts.gate_up_proj_bias": "model.layers.1.mlp.experts.gate_up_proj_bias",
        "layers.1.mlp.experts.down_proj": "model.layers.1.mlp.experts.down_proj",
        "layers.0.mlp.experts.down_proj_bias": "model.layers.0.mlp.experts.down_proj_bias",
    }
    for mine, ref in pairs.items():
        assert theirs[ref].grad.abs().max() > 0, ref
        torch.testing.assert_close(ours[mine].grad, theirs[ref].grad, rtol=1e-4, atol=1e-6, msg=mine)
    hf.zero_grad()
    hf.eval()


def test_lora_step_equals_peft_with_the_same_adapter(saved_gpt_oss, tmp_path):
    """Attention LoRA and one adapter per expert (PEFT's target_parameters on gpt-oss' transposed
    experts): same loss (with the load-balancing term) and adapter gradients, under checkpointing."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, folder = saved_gpt_oss
    model, _ = load(folder)
    model = lora(model)
    experts = dict(expert_lora_modules(model))
    assert len(experts) == 3 * 2
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["rank_pattern"] == {".*\\.gate_up_proj": 8}

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    peft = PeftModel.from_pretrained(hf, str(tmp_path / "adapter"), is_trainable=True).train()
    ids, mask = batch(3)
    labels = ids.masked_fill(mask == 0, -100)
    model.train()
    loss = model(ids, attention_mask=mask, labels=labels).loss
    ref = peft(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref.backward()
    assert_adapter_grads_equal_peft(model, peft)


def test_adapter_reloads_and_disabling_gives_the_base(saved_gpt_oss, tmp_path):
    hf, folder = saved_gpt_oss
    model, _ = load(folder)
    model = lora(model).eval()
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load(tmp_path / "adapter")
    assert all(isinstance(m, ExpertLora) for _, m in expert_lora_modules(again))
    ids, _ = batch(4)
    with torch.no_grad():
        tuned = model(ids).logits
        torch.testing.assert_close(again.eval()(ids).logits, tuned)
        with model.disable_adapter():
            base = model(ids).logits
        torch.testing.assert_close(base, hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert (tuned - base).abs().max() > 1e-4


def test_a_peft_made_adapter_loads_with_equal_logits(saved_gpt_oss, tmp_path):
    """PEFT's own gpt-oss adapter (attention modules + target_parameters) → loris: same logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _, folder = saved_gpt_oss
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    lcfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        init_lora_weights=False,
    )
    peft = get_peft_model(hf, lcfg)
    peft.save_pretrained(tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(folder)
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(config))
    model, _ = load(tmp_path / "peft")
    ids, _ = batch(5)
    with torch.no_grad():
        want = peft.eval()(input_ids=ids).logits
        torch.testing.assert_close(model.eval()(ids).logits, want, rtol=1e-5, atol=1e-5)
        with peft.disable_adapter():
            assert (want - peft(input_ids=ids).logits).abs().max() > 1e-4


def test_merged_export_loads_in_transformers_with_equal_logits(saved_gpt_oss, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    _, folder = saved_gpt_oss
    model, tok = load(folder)
    model = lora(model).eval()
    out = model.save_pretrained_merged(tmp_path / "merged", tok, save_method="merged_32bit")  # exact
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.router.bias"} <= keys
    assert "model.layers.2.self_attn.sinks" in keys
    assert not any("lora" in k for k in keys)
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager")
    ids, _ = batch(6)
    with torch.no_grad():
        torch.testing.assert_close(
            merged.eval()(input_ids=ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5
        )


def test_greedy_generation_equals_transformers(saved_gpt_oss):
    """Decoding through the KV cache past the sliding window, left-padded prompts."""
    hf, folder = saved_gpt_oss
    model, _ = load(folder)
    ids, mask = batch(7, n=6, side="left")
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    ref = hf.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_router_logits=False,
    )
    assert ours.tolist() == ref.tolist()


def test_4bit_experts_match_their_dequantized_weights(saved_gpt_oss, tmp_path):
    """QLoRA on gpt-oss' transposed experts: the NF4 model equals a 16-bit one holding the
    dequantized weights, forward and expert-adapter gradients; its merged export goes into the
    original 16-bit stacks."""
    _, folder = saved_gpt_oss
    ids, mask = batch(8)
    assert_4bit_experts_match(folder, ids, mask, tmp_path, attn_implementation="eager")


@pytest.mark.gpu
def test_bf16_cuda_logits_and_a_lora_step(saved_gpt_oss):
    """On CUDA in bf16: logits near transformers' eager gpt-oss in bf16, a LoRA step (attention and
    experts, under checkpointing) with finite, non-zero adapter gradients."""
    from transformers import AutoModelForCausalLM

    _, folder = saved_gpt_oss
    hf = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.bfloat16, attn_implementation="eager", device_map="cuda"
    ).eval()
    model, _ = load(folder, dtype=torch.bfloat16, device_map="cuda")
    ids, mask = (t.cuda() for t in batch(9, n=40))
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits.float()
        ref = hf(input_ids=ids, attention_mask=mask).logits.float()
    real = mask.bool()
    assert ((ours[real] - ref[real]).norm() / ref[real].norm()).item() < 2e-2
    model = lora(model)
    loss = model.train()(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    grads = [m.lora_A.grad for _, m in expert_lora_modules(model)] + [
        m.lora_A.grad for _, m in lora_modules(model)
    ]
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
