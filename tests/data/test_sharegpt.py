"""standardize_sharegpt and to_sharegpt on datasets.Dataset and on plain lists."""

from __future__ import annotations

import datasets
import pytest

from loris.chat_templates import standardize_data_formats, standardize_sharegpt, to_sharegpt
from loris.data.sharegpt import Field, MergedPrompt, OptionalSection

SHAREGPT_ROWS = [
    {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello!"},
        ],
        "source": "a",
    },
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "source": "b"},
]
EXPECTED = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
]


@pytest.mark.parametrize("as_dataset", [False, True])
def test_standardize_from_value(as_dataset):
    data = datasets.Dataset.from_list(SHAREGPT_ROWS) if as_dataset else SHAREGPT_ROWS
    out = standardize_sharegpt(data)
    assert isinstance(out, datasets.Dataset) == as_dataset
    assert [row["conversations"] for row in out] == EXPECTED
    assert [row["source"] for row in out] == ["a", "b"]  # other columns kept
    assert SHAREGPT_ROWS[0]["conversations"][0]["from"] == "system"  # input not mutated


def test_standardize_aliases_and_inferred_keys():
    rows = [
        {"conversations": [{"speaker": "input", "text": "q"}, {"speaker": "model", "text": "a"}]},
        {"conversations": [{"speaker": "user", "text": "q2"}, {"speaker": "output", "text": "a2"}]},
    ]
    out = standardize_data_formats(rows)
    assert out[0]["conversations"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert out[1]["conversations"][1] == {"role": "assistant", "content": "a2"}
    bot = [{"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}]
    out = standardize_sharegpt(bot, aliases_for_assistant=["bot"])
    assert out[0]["conversations"][1]["role"] == "assistant"


def test_standardize_is_idempotent_on_role_content():
    assert [r["conversations"] for r in standardize_sharegpt(standardize_sharegpt(SHAREGPT_ROWS))] == EXPECTED


def test_standardize_errors_name_the_problem():
    bad_role = [
        {"conversations": [{"from": "human", "value": "q"}]},
        {"conversations": [{"from": "bot", "value": "a"}]},
    ]
    with pytest.raises(
        ValueError, match=r"Row 1 of column 'conversations' has role 'bot'.*aliases_for_assistant"
    ):
        standardize_sharegpt(bad_role)
    with pytest.raises(
        ValueError, match=r"No 'conversations' column \(columns: \['instruction'\]\).*to_sharegpt"
    ):
        standardize_sharegpt([{"instruction": "x"}])
    with pytest.raises(ValueError, match="Cannot tell which keys"):
        standardize_sharegpt([{"conversations": [{"a": "user", "b": "x", "c": "y"}]}])
    with pytest.raises(ValueError, match="not a list of messages"):
        standardize_sharegpt([{"conversations": "hello"}])
    with pytest.raises(ValueError, match="given for both"):
        standardize_sharegpt(SHAREGPT_ROWS, aliases_for_user=["human", "gpt"])


ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    {"instruction": "Name a color.", "input": None, "output": "Blue"},
]
PROMPT = "{instruction}[[\nYour input is:\n{input}]]"


def test_merged_prompt_parse():
    assert MergedPrompt.parse(PROMPT).parts == (
        Field("instruction"),
        OptionalSection(("\nYour input is:\n", Field("input"))),
    )
    assert MergedPrompt.parse("a {{b}} {c}").render({"c": 1}) == "a {b} 1"
    for bad in ["[[{a}", "{a}]]", "[[ [[{a}]] ]]", "{ }", "x } y"]:
        with pytest.raises(ValueError):
            MergedPrompt.parse(bad)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_to_sharegpt_optional_sections(as_dataset):
    data = datasets.Dataset.from_list(ALPACA) if as_dataset else ALPACA
    out = to_sharegpt(data, merged_prompt=PROMPT, output_column_name="output")
    assert (out.column_names if as_dataset else list(out[0])) == ["conversations"]
    prompts = [row["conversations"][0]["value"] for row in out]
    assert prompts == ["Add the numbers.\nYour input is:\n2 and 2", "Say hi.", "Name a color."]
    assert [row["conversations"][1] for row in out] == [
        {"from": "gpt", "value": "4"},
        {"from": "gpt", "value": "Hi!"},
        {"from": "gpt", "value": "Blue"},
    ]
    assert all(row["conversations"][0]["from"] == "human" for row in out)


def test_to_sharegpt_keeps_columns_and_uses_the_column_as_is():
    out = to_sharegpt(ALPACA, merged_prompt=PROMPT, remove_unused_columns=False)
    assert set(out[0]) == {"instruction", "input", "output", "conversations"}
    assert out[0]["instruction"] == "Add the numbers.\nYour input is:\n2 and 2"  # the merged column
    plain = to_sharegpt(ALPACA)  # merged_prompt="" -> the instruction column as is
    assert plain[0]["conversations"][0]["value"] == "Add the numbers."


def test_to_sharegpt_conversation_extension():
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(20)]
    out = to_sharegpt(rows, conversation_extension=3, random_state=1)
    assert len(out) == 20
    for i, row in enumerate(out):
        conv = row["conversations"]
        assert len(conv) == 6 and [m["from"] for m in conv] == ["human", "gpt"] * 3
        assert conv[0]["value"] == f"q{i}" and conv[1]["value"] == f"a{i}"  # the row's own turn first
        for k in (2, 4):  # extra turns are whole rows: question and answer belong together
            assert conv[k]["value"][1:] == conv[k + 1]["value"][1:]
    again = to_sharegpt(rows, conversation_extension=3, random_state=1)
    assert again == out
    assert to_sharegpt(rows, conversation_extension=3, random_state=2) != out
    ds = to_sharegpt(datasets.Dataset.from_list(rows), conversation_extension=3, random_state=1)
    assert [r["conversations"] for r in ds] == [r["conversations"] for r in out]


def test_to_sharegpt_errors():
    with pytest.raises(ValueError, match=r"\['inputs'\] are not in the dataset"):
        to_sharegpt(ALPACA, merged_prompt="{instruction} {inputs}")
    with pytest.raises(ValueError, match="answer"):
        to_sharegpt(ALPACA, output_column_name="answer")
    with pytest.raises(ValueError, match="conversation_extension"):
        to_sharegpt(ALPACA, conversation_extension=0)


def test_pipeline_to_standardized_messages():
    out = standardize_sharegpt(to_sharegpt(datasets.Dataset.from_list(ALPACA), merged_prompt=PROMPT))
    assert out[1]["conversations"] == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ]
