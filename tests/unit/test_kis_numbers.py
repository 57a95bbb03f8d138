"""kis/numbers.py: the one parser of KIS number strings (REST replies, websocket frames)."""

from __future__ import annotations

import pytest

from kis.numbers import NumberError, krw, ratio


@pytest.mark.parametrize(
    "text,value",
    [("70000", 70_000), ("+1500", 1_500), ("-0100", -100), (" 12 ", 12), ("", 0), (None, 0), ("3450.00", 3_450)],
)
def test_integer_fields(text: str | None, value: int) -> None:
    assert krw(text) == value


def test_a_decimal_in_an_integer_field_rounds_half_up() -> None:
    assert (krw("123.5"), krw("123.49"), krw("-2.5"), krw(".5")) == (124, 123, -3, 1)


@pytest.mark.parametrize("text", ["7l900", "abc", "1e400", "1E3", "NaN", "inf", "-Infinity", "1.2.3", "--1"])
def test_what_is_not_a_plain_number_is_refused_never_read_as_some_figure(text: str) -> None:
    with pytest.raises(NumberError):
        krw(text)


def test_ratios() -> None:
    assert (ratio("12.34"), ratio(""), ratio(None), ratio("-0.5")) == (12.34, 0.0, 0.0, -0.5)
    for bad in ("x", "nan", "inf", "1e3"):
        with pytest.raises(NumberError):
            ratio(bad)
