"""Latency histograms: exact merging through the HdrHistogram encoding, bounds, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.loadgen.histograms import HIGHEST_US, LatencyHistogram, percentile_name

latencies = st.lists(st.integers(0, HIGHEST_US), max_size=200)
PROBES = (0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)


def filled(values: list[int]) -> LatencyHistogram:
    hist = LatencyHistogram()
    for value in values:
        hist.record_us(value)
    return hist


def figures(hist: LatencyHistogram) -> tuple[object, ...]:
    return (
        hist.count,
        hist.min_us(),
        hist.max_us(),
        hist.mean_us(),
        tuple(hist.percentiles_us(PROBES).items()),
    )


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(latencies, min_size=1, max_size=4))
def test_merging_encoded_histograms_equals_one_histogram_of_the_union(
    parts: list[list[int]],
) -> None:
    merged = LatencyHistogram()
    for part in parts:
        merged.add(LatencyHistogram.decode(filled(part).encode()))

    union = filled([v for part in parts for v in part])

    assert figures(merged) == figures(union)
    assert figures(LatencyHistogram.decode(merged.encode())) == figures(union)


def test_percentiles_are_within_a_thousandth_of_the_recorded_values() -> None:
    hist = filled(list(range(1, 100_001)))  # 1 µs .. 100 ms, one each

    assert hist.count == 100_000
    for p, exact in [(50.0, 50_000), (99.0, 99_000), (99.9, 99_900)]:
        found = hist.percentile_us(p)
        assert found is not None
        assert abs(found - exact) <= exact / 1000
    assert hist.summary_ms()["p99"] == pytest.approx(99.0, rel=1e-3)


def test_an_empty_histogram_has_no_figures() -> None:
    hist = LatencyHistogram()

    assert (hist.count, hist.min_us(), hist.max_us(), hist.percentile_us(99)) == (
        0,
        None,
        None,
        None,
    )
    assert set(hist.summary_ms().values()) == {None}


def test_a_latency_beyond_60_seconds_is_counted_at_60_seconds_and_reported_clamped() -> None:
    hist = LatencyHistogram()
    hist.record_seconds(75.0)
    hist.record_seconds(0.5)

    assert hist.count == 2
    assert hist.clamped == 1
    top = hist.max_us()
    assert top is not None and abs(top - HIGHEST_US) <= HIGHEST_US / 1000


def test_adding_into_an_empty_histogram_keeps_the_true_minimum() -> None:
    # HdrHistogram_py's own add() would report 0 here.
    hist = LatencyHistogram()
    hist.add(filled([1500, 9000]))

    assert hist.min_us() == 1500
    assert hist.max_us() == filled([9000]).max_us()


def test_decoding_something_else_says_what_it_is_not() -> None:
    with pytest.raises(ValueError, match="not an encoded HdrHistogram"):
        LatencyHistogram.decode("hello")


def test_decoding_a_histogram_with_other_bounds_is_refused() -> None:
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

    other = HdrHistogram(1, 1_000_000, 2)
    other.record_value(10)

    with pytest.raises(ValueError, match=r"other bounds \(1..1000000 µs, 2 digits\)"):
        LatencyHistogram.decode(other.encode().decode("ascii"))


@pytest.mark.parametrize(
    ("percentile", "name"), [(50.0, "p50"), (99.0, "p99"), (99.9, "p99.9"), (99.99, "p99.99")]
)
def test_percentile_names(percentile: float, name: str) -> None:
    assert percentile_name(percentile) == name
