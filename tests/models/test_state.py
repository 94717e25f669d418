"""`ModelState` is reached through the wrappers that hide a module's attributes."""

from __future__ import annotations

import torch
from torch import nn

from loris.models.config import ModelConfig
from loris.models.decoder import LorisForCausalLM
from loris.models.state import ModelState, model_state, unwrap_model


def _tiny() -> LorisForCausalLM:
    cfg = ModelConfig(
        model_type="llama",
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        max_position_embeddings=32,
    )
    return LorisForCausalLM(cfg)


def test_every_model_has_its_own_state():
    a, b = _tiny(), _tiny()
    assert isinstance(a.state, ModelState) and a.state is not b.state
    a.state.max_seq_length = 99
    assert b.state.max_seq_length is None


def test_state_through_data_parallel_and_compile_wrappers():
    model = _tiny()
    model.state.name_or_path = "me/tiny"
    wrapped = torch.compile(nn.DataParallel(model))  # compiles lazily: nothing runs here
    assert not hasattr(wrapped, "state")  # the reason for unwrap_model
    assert unwrap_model(wrapped) is model
    assert model_state(wrapped) is model.state and model_state(wrapped).name_or_path == "me/tiny"


def test_a_plain_module_has_an_empty_detached_state():
    plain = nn.Linear(2, 2)
    assert unwrap_model(plain) is plain
    first = model_state(plain)
    assert first == ModelState() and model_state(plain) is not first
