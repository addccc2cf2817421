"""Per-second bucketing, JSON round trips and merging of results, on an injected clock."""

from __future__ import annotations

import json

import pytest

from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.loadgen.recording import Recorder
from alwayson.loadgen.results import RunResult, merge_results
from alwayson.util.clocks import ManualClock

WALL = 1_800_000_000  # ManualClock's wall time at monotonic 1000.0


def recorder_at(monotonic: float = 1000.0, wall: float = float(WALL)) -> Recorder:
    return Recorder(ManualClock(start=monotonic, wall_start=wall))


def test_sent_and_dropped_count_when_meant_to_start_and_outcomes_when_finished() -> None:
    rec = recorder_at()
    rec.started(1000.2)
    rec.started(1000.9)
    rec.dropped_one(1000.95)
    rec.finished(1000.2, 1000.25, ok=True)  # 50 ms, ends in second 0
    rec.finished(1000.9, 1002.4, ok=False)  # 1.5 s, ends in second 2
    result = RunResult.from_recorder(rec, ended=1002.5)

    rows = [(r.second - WALL, r.sent, r.dropped, r.ok, r.failed, r.p99_us) for r in result.series()]
    assert rows == [
        (0, 2, 1, 1, 0, 50_015),  # 50 ms to 3 digits (top of its bucket)
        (1, 0, 0, 0, 0, None),  # a gap is a row of zeros, not a missing row
        (2, 0, 0, 0, 1, 1_500_159),
    ]
    assert (result.sent, result.ok, result.failed, result.dropped) == (2, 1, 1, 1)
    assert result.duration == 2.5
    assert result.error_rate == 0.5


def test_a_seconds_latency_is_frozen_once_a_later_second_finishes_something() -> None:
    rec = recorder_at()
    for k in range(10):
        rec.finished(1000.0, 1000.0 + (k + 1) / 100, ok=True)  # 10..100 ms in second 0
    assert rec.rows[WALL].live is not None

    rec.finished(1001.0, 1001.001, ok=True)

    first = rec.rows[WALL]
    assert first.live is None and first.histogram is not None
    assert (first.p50_us, first.p99_us, first.ok) == (50_015, 100_031, 10)
    assert LatencyHistogram.decode(first.histogram).count == 10
    assert rec.rows[WALL + 1].live is not None  # the current second stays open


def test_a_fractional_start_of_the_wall_clock_buckets_by_wall_second() -> None:
    rec = recorder_at(wall=WALL + 0.75)  # monotonic 1000.0 is 0.75 s into a wall second

    assert rec.second_of(1000.2) == WALL
    assert rec.second_of(1000.25) == WALL + 1


def test_steps_count_outcomes_and_error_kinds_and_requests_per_second() -> None:
    rec = recorder_at()
    rec.step("GET /a", 1000.0, 1000.01, None)
    rec.step("GET /a", 1000.0, 1000.02, "http 503")
    rec.step("GET /a", 1000.0, 1001.5, "ReadTimeout")
    rec.step("POST /b", 1000.0, 1000.03, "http 503")
    result = RunResult.from_recorder(rec, ended=1002.0)

    a = result.steps["GET /a"]
    assert (a.requests, a.ok, a.failed, a.errors) == (3, 1, 2, {"http 503": 1, "ReadTimeout": 1})
    assert result.steps["POST /b"].errors == {"http 503": 1}
    assert [r.requests for r in result.series()] == [3, 1]
    assert (result.requests, result.failed_requests, result.rps) == (4, 3, 2.0)


def sample(wall: float, latencies_ms: list[int], dropped: int = 0) -> RunResult:
    rec = recorder_at(wall=wall)
    for k, ms in enumerate(latencies_ms):
        intended = 1000.0 + k * 0.5
        rec.started(intended)
        rec.step("GET /", intended, intended + ms / 1000, None if ms < 900 else "http 500")
        rec.finished(intended, intended + ms / 1000, ok=ms < 900)
    for _ in range(dropped):
        rec.dropped_one(1000.0)
    return RunResult.from_recorder(rec, ended=1000.0 + len(latencies_ms) * 0.5)


def test_json_holds_every_figure_and_reads_back_to_the_same_result() -> None:
    result = sample(WALL, [10, 20, 950, 30], dropped=2)

    data = json.loads(json.dumps(result.to_json()))
    again = RunResult.from_json(data)

    assert data["iterations"] == {"sent": 4, "ok": 3, "failed": 1, "dropped": 2}
    assert data["requests"] == {"total": 4, "failed": 1}
    assert data["error_rate"] == 0.25
    assert data["rps"] == 2.0
    assert set(data["latency_ms"]) == {"min", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"}
    assert data["latency_ms"]["max"] == pytest.approx(950, rel=1e-3)
    assert data["steps"]["GET /"]["errors"] == {"http 500": 1}
    rows = [(r["t"], r["sent"], r["dropped"], r["ok"], r["failed"]) for r in data["series"]]
    assert rows == [(0, 2, 2, 2, 0), (1, 2, 0, 1, 1)]
    assert data["series"][1]["max_ms"] == pytest.approx(950, rel=1e-3)
    assert again.to_json() == result.to_json()


def test_json_without_histograms_is_smaller_and_cannot_be_merged() -> None:
    data = sample(WALL, [10, 20]).to_json(histograms=False)

    assert "histogram" not in data
    with pytest.raises(ValueError, match="lacks 'histogram'"):
        RunResult.from_json(data)


def test_json_of_something_else_is_refused() -> None:
    with pytest.raises(ValueError, match="not a load test result"):
        RunResult.from_json({"schema": "other"})


def test_merging_adds_counts_combines_seconds_and_equals_the_union_histogram() -> None:
    one = sample(WALL, [10, 20, 30, 40], dropped=1)
    two = sample(WALL + 0.5, [100, 200, 950])

    merged = merge_results([RunResult.from_json(one.to_json()), two])

    assert (merged.sent, merged.ok, merged.failed, merged.dropped) == (7, 6, 1, 1)
    assert merged.workers == 2
    assert merged.duration == 2.0  # from the first start to the last end (1.5 s after 0.5 s)
    union = LatencyHistogram()
    union.add(one.latency)
    union.add(two.latency)
    assert merged.latency.percentiles_us([50, 99, 100]) == union.percentiles_us([50, 99, 100])
    for second, row in merged.rows.items():
        parts = [r.rows[second] for r in (one, two) if second in r.rows]
        assert row.sent == sum(p.sent for p in parts)
        assert row.ok + row.failed == sum(p.ok + p.failed for p in parts)
        hist = LatencyHistogram()
        for part in parts:
            hist.add(part.latency())
        assert (row.p50_us, row.p99_us, row.max_us) == (
            hist.percentile_us(50),
            hist.percentile_us(99),
            hist.max_us(),
        )
    assert merged.steps["GET /"].requests == 7


def test_merging_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_results([])
