"""The names Unsloth notebooks call (issue #7 item 1), each called the way the notebooks call it.

Names already covered elsewhere: ``merged_4bit`` refusal + ``forced_merged_4bit`` spelling
(tests/export/test_hf_export.py::test_forced_alias_and_merged_4bit_refusal), ``to_sharegpt`` /
``standardize_data_formats`` (tests/data/test_sharegpt.py), custom ``{INPUT}``/``{OUTPUT}``/``{SYSTEM}``
templates rendered by Ollama (tests/export/test_ollama.py::test_custom_input_output_template).
"""

from __future__ import annotations

import logging

import pytest
import torch

import loris
import loris.face.loader
from loris import FastLanguageModel, FastModel
from loris.models.config import ModelConfig, RopeConfig
from loris.models.rope import rope_cos_sin


def _load(folder, **kw):
    kw.setdefault("dtype", torch.float32)
    kw.setdefault("load_in_4bit", False)
    return FastLanguageModel.from_pretrained(str(folder), **kw)


# ---- from_pretrained: vLLM settings and friends ------------------------------------------------


def test_vllm_and_loader_settings_are_accepted_with_one_note(saved_family, caplog, monkeypatch):
    monkeypatch.setattr(loris.face.loader, "_engine_note_given", False)
    _, folder = saved_family("llama")
    notebook = dict(  # Qwen2.5 GRPO's loader call, plus the other accepted settings
        max_seq_length=64,
        load_in_4bit=False,
        fast_inference=True,
        max_lora_rank=64,
        gpu_memory_utilization=0.9,
        float8_kv_cache=True,
        load_in_16bit=True,
        use_exact_model_name=True,
        disable_log_stats=True,
    )
    with caplog.at_level(logging.WARNING, logger="loris.face.loader"):
        model, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, **notebook)
        _load(folder, fast_inference=True, gpu_memory_utilization=0.5)
    notes = [r.getMessage() for r in caplog.records if "in-process engine" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "fast_inference" in notes[0] and "gpu_memory_utilization" in notes[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # load_in_16bit: no quantization
    assert model.fast_generate(["w5 w6"], loris.SamplingParams(temperature=0, max_tokens=3))[0].outputs


def test_unknown_loader_argument_names_itself_and_the_accepted_ones(saved_family):
    _, folder = saved_family("llama")
    with pytest.raises(TypeError, match="load_in_3bit.*Unsloth's loader arguments"):
        _load(folder, load_in_3bit=True)


# ---- max_seq_length beyond the context: linear RoPE scaling --------------------------------------


def test_max_seq_length_beyond_context_scales_rope_linearly(saved_family, caplog):
    """Tiny llama has 128 positions; max_seq_length=256 divides the rotary frequencies by 2 (as
    transformers' linear rope with factor 2 does) and the model still runs, matching transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _, folder = saved_family("llama")
    with caplog.at_level(logging.WARNING, logger="loris.face.loader"):
        model, _ = _load(folder, max_seq_length=256)
    assert any("scaled linearly by 2" in r.getMessage() for r in caplog.records)
    cfg = model.config
    assert (cfg.rope.rope_type, cfg.rope.factor, cfg.max_position_embeddings) == ("linear", 2.0, 256)
    # the tables: position p now turns as position p/2 did
    pos = torch.arange(200)[None]
    cos, sin = rope_cos_sin(cfg.rope, cfg.head_dim, 128, pos, torch.float32)
    cos0, sin0 = rope_cos_sin(RopeConfig(theta=cfg.rope.theta), cfg.head_dim, 128, pos / 2, torch.float32)
    torch.testing.assert_close((cos, sin), (cos0, sin0))
    plain, _ = _load(folder)
    ids = torch.randint(4, 160, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scaled_logits, plain_logits = model(ids).logits, plain(ids).logits
    assert torch.isfinite(scaled_logits).all()
    assert (scaled_logits - plain_logits).abs().max() > 1e-4  # (a tiny random model barely uses position)
    # the same scaling in transformers gives the same logits, and exports carry it
    hf_cfg = AutoConfig.from_pretrained(folder)
    hf_cfg.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": cfg.rope.theta}
    hf = AutoModelForCausalLM.from_pretrained(folder, config=hf_cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(scaled_logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    again = ModelConfig.from_hf(cfg.hf_config)  # what a merged/GGUF export writes back
    assert (again.rope.rope_type, again.rope.factor, again.max_position_embeddings) == ("linear", 2.0, 256)


def test_reloading_an_extended_export_does_not_stretch_twice(saved_family):
    from loris.models.rope import extend_context

    model, _ = _load(saved_family("llama")[1], max_seq_length=512)
    exported = ModelConfig.from_hf(model.config.hf_config)
    assert extend_context(exported, 512) is None and exported.rope.factor == 4.0


def test_gemma3_stretches_its_global_rope_only(saved_family):
    model, _ = _load(saved_family("gemma3")[1], max_seq_length=256)
    cfg = model.config
    assert (cfg.rope.rope_type, cfg.rope.factor) == ("linear", 16.0)  # its own linear 8, times 2
    assert cfg.rope_local.rope_type == "default"
    assert cfg.hf_config["rope_parameters"]["full_attention"]["factor"] == 16.0
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(4, 160, (1, 150))).logits).all()


def test_other_rope_scalings_are_kept_with_a_warning(saved_family, caplog):
    with caplog.at_level(logging.WARNING, logger="loris.face.loader"):
        model, _ = _load(saved_family("llama3.2")[1], max_seq_length=256)
    assert model.config.rope.rope_type == "llama3" and model.config.max_position_embeddings == 128
    assert any("'llama3' scaling, which is kept" in r.getMessage() for r in caplog.records)


def test_rope_scaling_argument(saved_family):
    _, folder = saved_family("llama")
    model, _ = _load(folder, rope_scaling={"type": "dynamic", "factor": 2.0})
    cfg = model.config
    assert (cfg.rope.rope_type, cfg.rope.factor) == ("dynamic", 2.0)
    base = RopeConfig(theta=cfg.rope.theta)
    inside, beyond = torch.arange(100)[None], torch.arange(200)[None]
    same = rope_cos_sin(cfg.rope, cfg.head_dim, 128, inside, torch.float32)
    torch.testing.assert_close(same, rope_cos_sin(base, cfg.head_dim, 128, inside, torch.float32))
    longer = rope_cos_sin(cfg.rope, cfg.head_dim, 128, beyond, torch.float32)[0]
    assert not torch.allclose(longer, rope_cos_sin(base, cfg.head_dim, 128, beyond, torch.float32)[0])
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(4, 160, (1, 200))).logits).all()
    with pytest.raises(ValueError, match="'type': 'linear', 'factor'"):
        _load(folder, rope_scaling={"type": "su", "factor": 2.0})


# ---- FastModel ------------------------------------------------------------------------------------


def _lora_targets(model) -> set[str]:
    from loris.lora import lora_modules

    return {name.rsplit(".", 1)[-1] for name, _ in lora_modules(model)}


@pytest.mark.parametrize(
    "flags, want",
    [
        ({}, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ({"finetune_mlp_modules": False}, {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ({"finetune_attention_modules": False}, {"gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_fastmodel_finetune_flags_pick_the_projections(saved_family, flags, want):
    model, tok = FastModel.from_pretrained(
        str(saved_family("gemma3")[1]), max_seq_length=64, load_in_4bit=False, full_finetuning=False
    )
    model = FastModel.get_peft_model(  # the Gemma-3 notebook's call
        model,
        finetune_vision_layers=False,
        finetune_language_layers=True,
        **{"finetune_attention_modules": True, "finetune_mlp_modules": True, **flags},
        r=8,
        lora_alpha=8,
        lora_dropout=0,
        bias="none",
        random_state=3407,
    )
    assert _lora_targets(model) == want
    assert issubclass(FastModel, FastLanguageModel)


@pytest.mark.parametrize(
    "flags, match",
    [
        ({"finetune_vision_layers": True}, "text-only model.*finetune_vision_layers=False"),
        ({"finetune_language_layers": False}, "leaves nothing to train"),
        ({"finetune_attention_modules": False, "finetune_mlp_modules": False}, "select no layers"),
    ],
)
def test_fastmodel_flags_that_select_nothing_say_what_to_do(saved_family, flags, match):
    model, _ = _load(saved_family("llama")[1])
    with pytest.raises(ValueError, match=match):
        FastModel.get_peft_model(model, r=4, **flags)


def test_is_bfloat16_supported_is_a_bool():
    got = loris.is_bfloat16_supported()
    assert isinstance(got, bool)
    if not torch.cuda.is_available():
        assert got is False


# ---- save_lora / load_lora / fast_generate(lora_request=...) ---------------------------------------


def test_save_lora_load_lora_fast_generate(saved_family, tmp_path):
    """Qwen2.5 GRPO's ending: ``model.save_lora("grpo_saved_lora")`` then
    ``fast_generate(text, sampling_params=..., lora_request=model.load_lora("grpo_saved_lora"))``."""
    from loris import SamplingParams
    from loris.lora import lora_modules

    model, _ = _load(saved_family("llama")[1])
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen))
    params = SamplingParams(temperature=0, top_p=0.95, max_tokens=8)
    prompt = "w5 w9 w11"
    trained = model.fast_generate([prompt], sampling_params=params, lora_request="live")[0].outputs[0]
    base = model.fast_generate([prompt], sampling_params=params, lora_request=None)[0].outputs[0]
    assert trained.token_ids != base.token_ids  # the adapter matters
    model.save_lora(tmp_path / "grpo_saved_lora")
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.zero_()
    request = model.load_lora(tmp_path / "grpo_saved_lora")
    out = model.fast_generate(prompt, sampling_params=params, lora_request=request)[0].outputs[0]
    assert out.token_ids == trained.token_ids and out.text == trained.text
    assert all(not m.lora_B.any() for _, m in lora_modules(model))  # the live adapter is restored
    with pytest.raises(FileNotFoundError, match="save it with model.save_lora"):
        model.load_lora(tmp_path / "nothing_here")


def test_load_lora_of_another_rank_restores_the_live_adapter(saved_family, tmp_path):
    """Generating with a saved adapter of another rank leaves the live adapter as it was: the same
    Parameter objects (an optimizer holds them), shapes, values, rank and scaling."""
    from loris import SamplingParams
    from loris.lora import lora_modules

    folder = saved_family("llama")[1]
    other, _ = _load(folder)
    other = FastLanguageModel.get_peft_model(other, r=8, lora_alpha=32, use_gradient_checkpointing=False)
    other.save_lora(tmp_path / "rank8")
    model, _ = _load(folder)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    before = {
        k: (m.lora_A, m.lora_B, m.lora_A.clone(), m.lora_B.clone(), m.r, m.scaling)
        for k, m in lora_modules(model)
    }
    params = SamplingParams(temperature=0, max_tokens=4)
    model.fast_generate("w5 w9", sampling_params=params, lora_request=model.load_lora(tmp_path / "rank8"))
    for k, m in lora_modules(model):
        a, b, a_val, b_val, r, scaling = before[k]
        assert m.lora_A is a and m.lora_B is b and (m.r, m.scaling) == (r, scaling)
        assert torch.equal(m.lora_A, a_val) and torch.equal(m.lora_B, b_val)


# ---- UnslothTrainer / UnslothTrainingArguments(embedding_learning_rate=...) ------------------------


def test_embedding_learning_rate_for_modules_to_save(saved_family, tmp_path):
    """The continued-pretraining notebooks: embed_tokens + lm_head in modules_to_save, trained at
    ``embedding_learning_rate`` while the LoRA matrices use ``learning_rate``."""
    from loris import UnslothTrainer, UnslothTrainingArguments

    model, tok = _load(saved_family("llama")[1])
    model = FastLanguageModel.get_peft_model(
        model,
        r=4,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "embed_tokens",
            "lm_head",
        ],  # fmt: skip
        lora_alpha=8,
        use_gradient_checkpointing=False,
    )
    embed_before = model.embed_tokens.weight.detach().clone()
    trainer = UnslothTrainer(
        model=model,
        tokenizer=tok,
        train_dataset=[{"text": f"w{5 + i} w{6 + i} w{7 + i}"} for i in range(4)],
        dataset_text_field="text",
        max_seq_length=16,
        args=UnslothTrainingArguments(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            max_steps=1,
            learning_rate=5e-3,
            embedding_learning_rate=5e-4,
            output_dir=str(tmp_path),
            save_strategy="no",
        ),
    )
    trainer.train()
    lrs = {
        g["name"]: g["initial_lr"] if "initial_lr" in g else g["lr"] for g in trainer.optimizer.param_groups
    }
    embed_groups = {n for n in lrs if n.startswith("embeddings")}
    assert embed_groups and all(lrs[n] == 5e-4 for n in embed_groups)
    assert all(lrs[n] == 5e-3 for n in lrs if n not in embed_groups)
    embedding_params = {id(p) for n in embed_groups for g in trainer.optimizer.param_groups
                        if g["name"] == n for p in g["params"]}  # fmt: skip
    assert id(model.embed_tokens.weight) in embedding_params
    assert not torch.equal(embed_before, model.embed_tokens.weight)


# ---- chat templates ------------------------------------------------------------------------------


def test_get_chat_template_mapping_renders_sharegpt_rows(saved_family):
    from loris.chat_templates import get_chat_template

    _, tok = _load(saved_family("llama")[1])
    tok = get_chat_template(
        tok,
        chat_template="chatml",  # (the tiny vocabulary gains <|im_end|>, with a warning)
        mapping={"role": "from", "content": "value", "user": "human", "assistant": "gpt"},
        map_eos_token=True,
    )
    sharegpt = [{"from": "human", "value": "w5 w6"}, {"from": "gpt", "value": "w7"}]
    plain = [{"role": "user", "content": "w5 w6"}, {"role": "assistant", "content": "w7"}]
    text = tok.apply_chat_template(sharegpt, tokenize=False)
    assert text == tok.apply_chat_template(plain, tokenize=False)
    assert text == "<|im_start|>user\nw5 w6<|im_end|>\n<|im_start|>assistant\nw7<|im_end|>\n"
    with pytest.raises(ValueError, match='"role": "from"'):
        get_chat_template(tok, "chatml", mapping={"speaker": "from"})


def test_custom_system_input_output_template_gives_the_ollama_template(saved_family):
    """The Llama-3 Ollama notebook: to_sharegpt → standardize_sharegpt → apply_chat_template with a
    {SYSTEM}/{INPUT}/{OUTPUT} template; the same pieces become the Modelfile's TEMPLATE."""
    from loris.chat_templates import apply_chat_template, standardize_sharegpt, to_sharegpt
    from loris.export.ollama import modelfile_for

    _, tok = _load(saved_family("llama")[1])
    rows = [{"instruction": f"w{10 + i}", "input": "w20" if i % 2 else "", "output": f"w{30 + i}"} for i in range(4)]  # fmt: skip
    data = to_sharegpt(rows, merged_prompt="{instruction}[[\nYour input is:\n{input}]]",
                       output_column_name="output", conversation_extension=3)  # fmt: skip
    data = standardize_sharegpt(data)
    template = "SYSTEM: {SYSTEM}\n\nUSER: {INPUT}\n\nASSISTANT: {OUTPUT}"
    data = apply_chat_template(data, tokenizer=tok, chat_template=template,
                               default_system_message="You are a helpful assistant")  # fmt: skip
    assert data[0]["text"].startswith(
        "SYSTEM: You are a helpful assistant\n\nUSER: w10\n\nASSISTANT: w30</s>"
    )
    assert data[0]["text"].count("USER:") == 3  # conversation_extension=3 merged three rows
    modelfile = modelfile_for(tok, "model.Q8_0.gguf")
    assert 'SYSTEM """You are a helpful assistant"""' in modelfile
    template_block = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "SYSTEM: " in template_block and "USER: " in template_block and "ASSISTANT: " in template_block
    assert "{{ .Content }}" in template_block


def test_quantization_names_in_any_case():
    from loris.export.gguf_quants import resolve_quantization_methods

    assert resolve_quantization_methods("Q8_0") == resolve_quantization_methods("q8_0")
    assert resolve_quantization_methods(["Q4_K_M", "q8_0", "Q5_k_m"]) == resolve_quantization_methods(
        ["q4_k_m", "q8_0", "q5_k_m"]
    )
    with pytest.raises(ValueError, match="q4_k_m"):
        resolve_quantization_methods("Q9_9")


def test_quantization_type_is_the_gemma_notebooks_spelling(monkeypatch, tmp_path):
    import types

    import loris.export.gguf as gguf_mod
    from loris.face.model import LorisModel

    seen = []
    monkeypatch.setattr(
        gguf_mod,
        "save_gguf",
        lambda model, d, tok, quantization_method, **kw: seen.append(quantization_method) or [],
    )
    dummy = types.SimpleNamespace(tokenizer=None)
    LorisModel.save_pretrained_gguf(dummy, tmp_path, quantization_type="Q8_0")
    LorisModel.save_pretrained_gguf(dummy, tmp_path, quantization_method="q4_k_m")
    assert seen == ["Q8_0", "q4_k_m"]
    with pytest.raises(ValueError, match="disagree"):
        LorisModel.save_pretrained_gguf(
            dummy, tmp_path, quantization_method="q4_k_m", quantization_type="Q8_0"
        )


# ---- GRPOConfig as the GRPO notebooks spell it -----------------------------------------------------


def test_grpo_config_takes_the_notebooks_vllm_settings_and_batch_of_one(tmp_path):
    from loris import GRPOConfig, SamplingParams

    sampling = SamplingParams(min_p=0.1, top_p=1.0, top_k=-1, seed=3407, stop=["</s>"],
                              include_stop_str_in_output=True)  # fmt: skip
    with pytest.warns(UserWarning) as record:
        args = GRPOConfig(
            use_vllm=True,
            vllm_sampling_params=sampling,
            temperature=1.0,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=1,
            num_generations=4,
            output_dir=str(tmp_path),
            report_to="none",
        )
    messages = " ".join(str(w.message) for w in record)
    assert "using per_device_train_batch_size=4" in messages and "stop is not applied" in messages
    assert (args.per_device_train_batch_size, args.generation_batch_size, args.prompts_per_generation) == (
        4,
        4,
        1,
    )
    assert (args.min_p, args.top_p, args.top_k) == (0.1, 1.0, 0)
