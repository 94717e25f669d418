"""The generic path against its oracles: transformers (logits, merged checkpoints, greedy generation)
and PEFT (a LoRA step's loss and gradients from the same adapter, adapter files), on tiny random
models of families loris has no native implementation for."""

from __future__ import annotations

import json

import pytest
import torch

from loris import FastLanguageModel
from loris.lora import LoraLinear, lora_modules
from loris.models.generic import GenericCausalLM, GenericModelError
from tiny_models import GENERIC_FAMILIES, make_generic_model, tiny_tokenizer

THREE = ["granite", "olmo2", "cohere"]


@pytest.fixture(scope="module")
def saved_generic(tmp_path_factory):
    """family → (transformers model, folder it was saved to), built once per module."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            model = make_generic_model(family)
            folder = tmp_path_factory.mktemp(family)
            model.save_pretrained(folder)
            tiny_tokenizer().save_pretrained(folder)
            cache[family] = (model, folder)
        return cache[family]

    return get


def load(folder, **kw):
    kw = {"load_in_4bit": False, "dtype": torch.float32, "device_map": "cpu", **kw}
    return FastLanguageModel.from_pretrained(str(folder), **kw)


def with_lora(model, **kw):
    """LoRA r=4 on the seven usual projections, B random too (so the update is not zero)."""
    kw = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, "use_gradient_checkpointing": False, **kw}
    return FastLanguageModel.get_peft_model(model, **kw)


def batch(seed=0, b=2, n=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 160, (b, n), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    return ids, mask


@pytest.mark.parametrize("family", list(GENERIC_FAMILIES))
def test_logits_equal_transformers(family, saved_generic, caplog):
    hf, folder = saved_generic(family)
    with caplog.at_level("WARNING"):
        model, _ = load(folder)
    assert isinstance(model, GenericCausalLM) and model.head_is_linear
    ids, mask = batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        ref = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # the chunked loss from hidden states is transformers' loss on its logits
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        loss = model(ids, attention_mask=mask, labels=labels).loss
        ref_loss = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)


def test_says_once_that_it_runs_the_generic_path(saved_generic, caplog):
    from loris.models import generic

    _, folder = saved_generic("granite")
    generic._noted.discard("granite")
    with caplog.at_level("WARNING"):
        load(folder)
        load(folder)
    notes = [r for r in caplog.records if "generic path" in r.getMessage()]
    assert len(notes) == 1 and "granite" in notes[0].getMessage()


def _peft_twin(folder, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    peft = PeftModel.from_pretrained(hf, str(adapter), is_trainable=True)
    return peft.train()


@pytest.mark.parametrize("family", THREE)
def test_lora_step_equals_peft_with_the_same_adapter(family, saved_generic, tmp_path):
    """Adapter saved by loris → loaded by PEFT onto transformers' model: same loss, same gradients."""
    _, folder = saved_generic(family)
    model, _ = load(folder)
    model = with_lora(model)
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    peft = _peft_twin(folder, tmp_path / "adapter")

    ids, mask = batch(1)
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    ref = peft(input_ids=ids, attention_mask=mask, labels=labels).loss
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)

    peft_params = dict(peft.named_parameters())
    mods = dict(lora_modules(model))
    assert len(mods) == 3 * 7
    for name, mod in mods.items():
        for part in ("lora_A", "lora_B"):
            theirs = peft_params[f"base_model.model.{name}.{part}.default.weight"]
            torch.testing.assert_close(getattr(mod, part).grad, theirs.grad, rtol=1e-4, atol=1e-7)
            assert getattr(mod, part).grad.abs().max() > 0


@pytest.mark.parametrize("family", THREE)
def test_merged_export_loads_in_transformers_with_equal_logits(family, saved_generic, tmp_path):
    from transformers import AutoModelForCausalLM

    _, folder = saved_generic(family)
    model, tok = load(folder)
    model = with_lora(model).eval()
    out = model.save_pretrained_merged(tmp_path / "merged", tok, save_method="merged_32bit")  # exact
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids, mask = batch(2)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids, attention_mask=mask).logits,
            model(ids, attention_mask=mask).logits,
            rtol=1e-4,
            atol=1e-5,
        )
    assert (out / "tokenizer_config.json").is_file()


def test_adapter_folder_reloads_on_the_generic_path(saved_generic, tmp_path):
    _, folder = saved_generic("olmo2")
    model, _ = load(folder)
    model = with_lora(model, target_modules="all-linear").eval()
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load(tmp_path / "adapter")
    assert isinstance(again, GenericCausalLM)
    ids, mask = batch(3)
    with torch.no_grad():
        torch.testing.assert_close(
            again.eval()(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
        )


def test_greedy_generation_equals_transformers(saved_generic):
    hf, folder = saved_generic("granite")
    model, tok = load(folder)
    model = with_lora(model)
    FastLanguageModel.for_inference(model)
    ids, mask = batch(4, n=6)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    with model.disable_adapter():
        base = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    ref = hf.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert base.tolist() == ref.tolist()
    assert ours.shape == ref.shape


def test_gradient_checkpointing_keeps_the_gradients(saved_generic):
    _, folder = saved_generic("cohere")
    grads = []
    for mode in (False, True):
        model, _ = load(folder)
        model = with_lora(model, use_gradient_checkpointing=mode).train()
        assert model.gradient_checkpointing == (True if mode else None)
        ids, mask = batch(5)
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_target_modules_name_the_models_own_layers(saved_generic):
    _, folder = saved_generic("olmo2")
    model, _ = load(folder)
    with pytest.raises(ValueError, match="unknown target module 'query_key_value'.*q_proj"):
        FastLanguageModel.get_peft_model(model, target_modules=["query_key_value"])
    model = FastLanguageModel.get_peft_model(model, target_modules=["o_proj"], layers_to_transform=[1])
    assert [n for n, _ in lora_modules(model)] == ["model.layers.1.self_attn.o_proj"]


def test_4bit_linears_are_nf4_and_match_their_dequantized_weights(saved_generic):
    from transformers import AutoModelForCausalLM

    from loris.quant import Linear4bit

    _, folder = saved_generic("granite")
    model, _ = load(folder, load_in_4bit=True)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert len(quantized) == 3 * 7 and "lm_head" not in quantized
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, m in quantized.items():
            ref.get_submodule(name).weight.copy_(m.dequantize(torch.float32))
        ids, mask = batch(6)
        torch.testing.assert_close(
            model(ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits
        )
    model = with_lora(model)
    assert all(isinstance(m.base, Linear4bit) for _, m in lora_modules(model))


def test_sft_trainer_trains_a_generic_model(saved_generic, tmp_path):
    from loris import SFTConfig, SFTTrainer

    _, folder = saved_generic("granite")
    model, tok = load(folder)
    model = with_lora(model, init_lora_weights=True, use_gradient_checkpointing=True)
    before = {n: m.lora_B.detach().clone() for n, m in lora_modules(model)}
    rows = [{"text": " ".join(f"w{5 + (i * 7 + j) % 50}" for j in range(12))} for i in range(8)]
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    SFTTrainer(model, args, train_dataset=rows, processing_class=tok).train()
    assert all(not torch.equal(before[n], m.lora_B) for n, m in lora_modules(model))


def test_grpo_trains_a_generic_model(saved_generic, tmp_path):
    from loris import GRPOConfig, GRPOTrainer

    _, folder = saved_generic("olmo2")
    model, tok = load(folder)
    model = with_lora(model, init_lora_weights=True)
    before = {n: m.lora_B.detach().clone() for n, m in lora_modules(model)}

    def length(prompts, completions, **_):
        return [len(c) / 10 for c in completions]

    data = [{"prompt": f"w{5 + i} w{9 + i} w{20 + i}"} for i in range(4)]
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=length, args=args, train_dataset=data, processing_class=tok
    )
    trainer.train()
    assert any(not torch.equal(before[n], m.lora_B) for n, m in lora_modules(model))


def test_gguf_export_names_what_is_missing(saved_generic, tmp_path):
    _, folder = saved_generic("granite")
    model, tok = load(folder)
    with pytest.raises(ValueError, match="gguf-py knows the architecture.*convert_hf_to_gguf"):
        model.save_pretrained_gguf(tmp_path / "gguf", tok)
    assert not (tmp_path / "gguf").exists()


def test_a_model_type_transformers_does_not_know_is_a_clear_error(saved_generic, tmp_path):
    _, folder = saved_generic("olmo2")
    broken = tmp_path / "custom"
    broken.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "my_custom_lm"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(GenericModelError, match="neither a loris family.*trust_remote_code=True"):
        load(broken)


def test_lora_modules_wrap_the_transformers_linears(saved_generic):
    _, folder = saved_generic("stablelm")
    model, _ = load(folder)
    model = with_lora(model)
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(q, LoraLinear) and q.base.bias is not None
    assert model.state_dict().keys() >= {"model.layers.0.self_attn.q_proj.base.weight", "lm_head.weight"}
