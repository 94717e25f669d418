"""The demo task: reproducible splits, unambiguous dates, exact scoring."""

from __future__ import annotations

import datetime as dt

from loris.demos.dates import STYLES, is_correct, make_split


def test_splits_are_reproducible_and_answers_are_iso_dates():
    a, b = make_split(50, seed=1), make_split(50, seed=1)
    assert a == b and make_split(50, seed=2) != a
    for row in a:
        assert dt.date.fromisoformat(row["answer"]).isoformat() == row["answer"]
        assert row["messages"][-1] == {"role": "assistant", "content": row["answer"]}


def test_every_style_keeps_day_month_and_year_recoverable():
    d = dt.date(2021, 3, 5)
    rendered = [style(d) for style in STYLES]
    assert len(set(rendered)) == len(STYLES)
    assert all("2021" in r for r in rendered)
    assert all(("5" in r) for r in rendered)


def test_scoring_is_exact_on_the_first_line():
    assert is_correct("2021-03-05\nextra", "2021-03-05")
    assert is_correct("  2021-03-05  ", "2021-03-05")
    assert not is_correct("The date is 2021-03-05", "2021-03-05")
    assert not is_correct("", "2021-03-05")
