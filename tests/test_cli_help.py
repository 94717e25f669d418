"""Every argument of every `loris` subcommand says what it does, and its default where it has one."""

from __future__ import annotations

import argparse

import pytest

from loris.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_is_listed_with_help():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {a.dest for a in sub._choices_actions if a.help}
    assert helped == set(sub.choices) >= {"demo", "chat", "export", "train"}


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_argument_has_help_naming_its_default(command, capsys):
    parser = _subcommands()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"loris {command} {name} has no help text"
        has_default = action.default not in (None, False, argparse.SUPPRESS) and not action.required
        if has_default:
            assert "default" in action.help.lower(), f"loris {command} {name}: help does not name its default"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "%(default)" not in text and "usage: loris " + command in text


def test_demo_help_explains_task_output_dir_and_max_steps(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sft: LoRA SFT" in text and "grpo: GRPO" in text and "Default: sft" in text
    assert "loris-demo for sft" in text and "60 for sft" in text
