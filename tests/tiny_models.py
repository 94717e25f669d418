"""Tiny random checkpoints of every supported family, built and saved with transformers itself."""

from __future__ import annotations

import torch

VOCAB = 160

# Each entry: transformers config kwargs for a tiny model exercising the family's quirks.
FAMILIES: dict[str, dict] = {
    "llama": dict(model_type="llama", attention_bias=False),
    "llama3.2": dict(
        model_type="llama",
        tie_word_embeddings=True,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
        rope_theta=500000.0,
    ),
    "mistral": dict(model_type="mistral", sliding_window=6),
    "qwen2": dict(model_type="qwen2", use_sliding_window=True, sliding_window=6, max_window_layers=1),
    "qwen3": dict(model_type="qwen3", head_dim=24),
    "gemma2": dict(
        model_type="gemma2",
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=6,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
    ),
    "gemma3": dict(
        model_type="gemma3_text",
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_scaling=dict(rope_type="linear", factor=8.0),
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
    ),
    "phi3": dict(
        model_type="phi3",
        max_position_embeddings=64,
        original_max_position_embeddings=32,
        rope_scaling=dict(
            type="longrope",
            short_factor=[1.0 + 0.1 * i for i in range(8)],
            long_factor=[2.0 + i for i in range(8)],
        ),
    ),
}

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def hf_config(family: str):
    from transformers import CONFIG_MAPPING

    kw = {**BASE, **FAMILIES[family]}
    model_type = kw.pop("model_type")
    return CONFIG_MAPPING[model_type](**kw)


def make_hf_model(family: str, seed: int = 0):
    """A random transformers model with randomised norm weights (so (1 + w) vs w mistakes show)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = hf_config(family)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def tiny_tokenizer():
    """A word-level tokenizer over VOCAB ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then w4 ... w{VOCAB-1}."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def save_tiny(model, folder) -> None:
    """Save a transformers model with the tiny tokenizer beside it, as a Hub checkpoint folder looks."""
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)


def tiny_bpe_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``corpus`` (GGUF needs BPE or SentencePiece, not WordLevel),
    with ChatML's special tokens: <|endoftext|> = BOS/pad, <|im_end|> = EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def save_bpe_llama(folder, chat_template: str | None = None):
    """A tiny llama saved with a byte-level BPE tokenizer.

    ``chat_template``: a Jinja string, or a loris template name applied with `get_chat_template`."""
    from transformers import AutoModelForCausalLM

    fast = tiny_bpe_tokenizer(["hello world, the quick brown fox"] * 20, vocab_size=280)
    if chat_template is not None and "{%" in chat_template:
        fast.chat_template = chat_template
    elif chat_template is not None:
        from loris.chat_templates import get_chat_template

        get_chat_template(fast, chat_template)
    cfg = hf_config("llama")
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 288, 0, 2, 0
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


# Families loris has no native implementation for (they run on the generic path), each with the
# config quirks that change its math: Granite's four multipliers, Cohere's logit scale and parallel
# block, OLMo 2's post-norms and q/k norms over the whole projection.
GENERIC_FAMILIES: dict[str, dict] = {
    "granite": dict(
        model_type="granite",
        logits_scaling=4.0,
        embedding_multiplier=2.0,
        residual_multiplier=0.5,
        attention_multiplier=0.2,
    ),
    "olmo2": dict(model_type="olmo2"),
    "cohere": dict(model_type="cohere", logit_scale=0.5),
    "smollm3": dict(model_type="smollm3", no_rope_layer_interval=2),
    "stablelm": dict(model_type="stablelm", partial_rotary_factor=0.5, use_qkv_bias=True),
}


def make_generic_model(family: str, seed: int = 0):
    """A random transformers model of a family on loris' generic path (norm weights randomised)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    kw = {**BASE, **GENERIC_FAMILIES[family]}
    model_type = kw.pop("model_type")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**kw), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


# Qwen3-MoE: 4 experts, top-2, a transformers-style load-balancing loss switched on; the router
# weights are randomised wider than init so tokens spread over the experts.
QWEN3_MOE = dict(
    model_type="qwen3_moe",
    moe_intermediate_size=32,
    num_experts=4,
    num_experts_per_tok=2,
    norm_topk_prob=True,
    output_router_logits=True,
    router_aux_loss_coef=0.1,
)


def make_moe_model(seed: int = 0, **overrides):
    """A random transformers Qwen3-MoE (norm and router weights randomised)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    kw = {**BASE, **QWEN3_MOE, **overrides}
    model_type = kw.pop("model_type")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**kw), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)
    return model.eval()


GPT_OSS = dict(
    model_type="gpt_oss",
    head_dim=16,
    intermediate_size=32,
    num_local_experts=4,
    num_experts_per_tok=2,
    sliding_window=4,  # shorter than the test sequences: the window and the sinks both matter
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    rope_parameters=dict(
        rope_type="yarn",
        factor=8.0,
        beta_fast=32.0,
        beta_slow=1.0,
        truncate=False,
        original_max_position_embeddings=16,
        rope_theta=150000.0,
    ),
    output_router_logits=True,
    router_aux_loss_coef=0.1,
    attn_implementation="eager",  # transformers' gpt-oss has no SDPA path
)


def make_gpt_oss_model(seed: int = 0, **overrides):
    """A random transformers gpt-oss (norms, sinks, router and every bias randomised)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    kw = {**BASE, **GPT_OSS, **overrides}
    model_type = kw.pop("model_type")
    attn = kw.pop("attn_implementation")
    torch.manual_seed(seed)
    config = CONFIG_MAPPING[model_type](**kw)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif name.endswith(("sinks", "bias")) or ".router." in name:
                p.normal_(0.0, 0.5)
    return model.eval()
