"""Durations as operators write them: ``500ms``, ``1s``, ``1m30s``, ``1h``, or seconds."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.util.durations import DURATION_PATTERN, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m30s", 90.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1s500ms", 1.5),
        (" 1m 30s ", 90.0),
        ("0s", 0.0),
    ],
)
def test_parse_text(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("number", "seconds"), [(0, 0.0), (2, 2.0), (0.25, 0.25), (90, 90.0)])
def test_numbers_are_seconds(number: float, seconds: float) -> None:
    result = parse_duration(number)

    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize("text", ["", "10", "1sec", "s", "-1s", "1.s", "1 minute", "1m-30s", "ms"])
def test_text_needs_a_known_unit(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration; write it like"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_negative_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="a duration cannot be negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_durations(value: bool) -> None:
    with pytest.raises(ValueError, match="a duration must be a number of seconds"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.5, "500ms"),
        (0.001, "1ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.0, "59s"),
        (60.0, "1m"),
        (90.0, "1m30s"),
        (3600.0, "60m"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 999),
    st.integers(0, 9),
)
def test_parse_adds_up_every_part(d: int, h: int, m: int, ms: int, s: int) -> None:
    text = f"{d}d{h}h{m}m{s}s{ms}ms"

    assert math.isclose(
        parse_duration(text), d * 86400 + h * 3600 + m * 60 + s + ms / 1000, rel_tol=1e-12
    )


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_numbers_round_trip(seconds: float) -> None:
    assert parse_duration(seconds) == seconds


@given(st.integers(0, 59_999))
def test_whole_milliseconds_under_a_minute_round_trip(ms: int) -> None:
    seconds = ms / 1000

    text = format_duration(seconds)

    assert math.isclose(parse_duration(text), seconds, abs_tol=1e-9)
    assert parse_duration(text) >= 0


@given(st.integers(0, 10**7))
def test_whole_seconds_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(float(seconds))) == seconds


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_format_always_writes_a_valid_duration(seconds: float) -> None:
    assert re.fullmatch(DURATION_PATTERN, format_duration(seconds))


@pytest.mark.parametrize("text", ["1m500ms", "1m30.5s", "2h0.25s"])
def test_durations_of_a_minute_or_more_keep_their_fraction(text: str) -> None:
    seconds = parse_duration(text)

    assert parse_duration(format_duration(seconds)) == seconds
