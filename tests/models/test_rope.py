"""Rotary tables for every rope-scaling variant against transformers' rotary embedding modules."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Phi3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from loris.models.config import ModelConfig
from loris.models.rope import rope_cos_sin

BASE = dict(
    hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=32, num_hidden_layers=1
)

SCALINGS = {
    "default": None,
    "linear": dict(rope_type="linear", factor=4.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "llama3": dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
    ),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
    "yarn-mscale": dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=64, mscale=0.707, mscale_all_dim=1.0
    ),
}


def _compare(hf_rotary, cfg: ModelConfig, positions: torch.Tensor) -> None:
    x = torch.zeros(1, dtype=torch.float32)
    ref_cos, ref_sin = hf_rotary(x, positions)
    cos, sin = rope_cos_sin(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, positions, torch.float32)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(SCALINGS))
def test_llama_rope_tables(name):
    hf = LlamaConfig(**BASE, max_position_embeddings=256, rope_theta=50000.0, rope_scaling=SCALINGS[name])
    cfg = ModelConfig.from_hf(hf)
    positions = torch.stack([torch.arange(0, 200, 3), torch.arange(10, 210, 3)])
    _compare(LlamaRotaryEmbedding(hf), cfg, positions)


@pytest.mark.parametrize("length", [40, 100])  # below and above original_max_position_embeddings
def test_phi3_longrope_tables_switch_factors_with_length(length):
    hf = Phi3Config(
        **BASE,
        max_position_embeddings=256,
        original_max_position_embeddings=64,
        partial_rotary_factor=0.5,
        rope_scaling=dict(
            type="longrope",
            short_factor=[1.0 + 0.1 * i for i in range(4)],
            long_factor=[2.0 + i for i in range(4)],
        ),
    )
    cfg = ModelConfig.from_hf(hf)
    assert cfg.rope.rotary_dim == 8
    positions = torch.arange(length)[None]
    _compare(Phi3RotaryEmbedding(hf), cfg, positions)


@pytest.mark.parametrize("truncate", [False, True])
def test_gpt_oss_yarn_tables(truncate):
    """gpt-oss' YaRN (its default rope_parameters, with and without truncating the ramp)."""
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    hf = GptOssConfig(**BASE, head_dim=16, num_local_experts=2, max_position_embeddings=4096)
    hf.rope_parameters["truncate"] = truncate
    cfg = ModelConfig.from_hf(hf)
    assert cfg.rope.rope_type == "yarn" and cfg.rope.truncate is truncate and cfg.rope.theta == 150000.0
    positions = torch.stack([torch.arange(0, 4000, 37), torch.arange(5, 4005, 37)])
    ref_cos, ref_sin = GptOssRotaryEmbedding(hf)(torch.zeros(1), positions)
    cos, sin = rope_cos_sin(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, positions, torch.float32)
    # gpt-oss rotates (first half, second half) pairs with half-width tables; loris' hold them twice
    torch.testing.assert_close(cos, torch.cat([ref_cos, ref_cos], -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, torch.cat([ref_sin, ref_sin], -1), rtol=0, atol=1e-6)
    assert (cos[0, 5] - cos[0, 4]).abs().max() > 0.01
