"""Latency histograms: exact merging through the HdrHistogram encoding, bounds, errors."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
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


def test_values_recorded_in_a_batch_count_exactly_as_the_library_would() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1 / 800) for _ in range(9000)]
    values += [0.4, 0.5, 1.5, 2047.5, 2048.0, 123_456.7, 59_999_999.6, 75e6, -3.0]
    batched = LatencyHistogram()
    for v in values:
        batched.record_us(v)  # appended, then counted in C when read
    reference = HdrHistogram(1, 60_000_000, 3)
    clamped = 0
    for v in values:
        whole = round(v)
        clamped += whole > 60_000_000
        reference.record_value(min(max(whole, 0), 60_000_000))

    assert batched.count == reference.get_total_count() == len(values)
    assert batched.clamped == clamped == 1
    assert list(batched._hist.counts) == list(reference.counts)
    assert (batched.min_us(), batched.max_us()) == (
        reference.get_min_value(),
        reference.get_max_value(),
    )
    for p in (0, 50, 99, 99.99, 100):
        assert batched.percentile_us(p) == reference.get_value_at_percentile(p)
