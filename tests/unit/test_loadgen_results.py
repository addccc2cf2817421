"""Per-second bucketing, JSON round trips and merging of results, on an injected clock."""

from __future__ import annotations

import json

import pytest

from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.loadgen.recording import Recorder
from alwayson.loadgen.results import MemorySample, RunResult, merge_results
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


# -- long runs: old seconds folded into minutes and hours, totals exact --------------------


def test_three_days_of_seconds_keep_a_bounded_number_of_rows_and_exact_totals() -> None:
    clock = ManualClock(start=1000.0, wall_start=float(WALL))
    rec = Recorder(clock)
    every = LatencyHistogram()
    most = 0
    for second in range(3 * 86400):
        at = 1000.0 + second
        rec.started(at + 0.1)
        if second % 7 == 0:
            rec.dropped_one(at + 0.2)
        if second % 30 == 0:  # a finished iteration (with a latency) twice a minute
            latency = 0.001 * (1 + second % 997)
            rec.finished(at + 0.1, at + 0.1 + latency, ok=second % 90 != 0)
            every.record_seconds(latency)
        if second % 3600 == 0:
            rec.settle(rec.second_of(at))
            most = max(most, len(rec.rows))
    result = RunResult.from_recorder(rec, ended=1000.0 + 3 * 86400)

    bound = 3600 + 60 + 1440 + 60 + 72  # each tier, plus one bucket not yet folded
    assert most <= bound  # not one row per second (259,200)
    assert len(result.rows) <= bound
    spans = {r.span for r in result.rows.values()}
    assert spans == {1, 60, 3600}
    assert sum(r.sent for r in result.rows.values()) == result.sent == 3 * 86400
    assert sum(r.dropped for r in result.rows.values()) == result.dropped
    assert sum(r.ok + r.failed for r in result.rows.values()) == result.finished
    union = LatencyHistogram()
    for row in result.rows.values():
        union.add(row.latency())
    assert union.count == every.count == result.latency.count
    assert union.percentiles_us([50, 99, 100]) == every.percentiles_us([50, 99, 100])
    hours = sorted(s for s, r in result.rows.items() if r.span == 3600)
    minutes = sorted(s for s, r in result.rows.items() if r.span == 60)
    seconds = sorted(s for s, r in result.rows.items() if r.span == 1)
    assert hours[-1] + 3600 <= minutes[0] and minutes[-1] + 60 <= seconds[0]
    assert seconds[-1] - seconds[0] < 3600 + 60
    assert all(s % 3600 == 0 for s in hours) and all(s % 60 == 0 for s in minutes)


def test_a_folded_series_reads_back_and_fills_gaps_at_its_own_resolution() -> None:
    rec = Recorder(ManualClock(start=1000.0, wall_start=float(WALL)), folding=((120, 60),))
    for second in (0, 1, 2, 200, 400, 401):  # minute 1 and seconds 300-399 are empty
        rec.started(1000.0 + second)
        rec.finished(1000.0 + second, 1000.0 + second + 0.01, ok=True)
    result = RunResult.from_recorder(rec, ended=1402.0)

    series = result.series()
    assert [(r.second - WALL, r.span) for r in series[:5]] == [
        (0, 60),
        (60, 60),  # an empty minute among folded rows
        (120, 60),
        (180, 60),
        (240, 60),  # gaps are filled at the resolution of the row before them
    ]
    assert sum(r.span for r in series) == 402
    again = RunResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again.to_json() == result.to_json()
    assert {(r.second, r.span) for r in again.rows.values() if r.ok} == {
        (r.second, r.span) for r in result.rows.values() if r.ok
    }


def test_merging_a_folded_run_with_an_unfolded_one_folds_the_other_into_its_minutes() -> None:
    folded = Recorder(ManualClock(start=1000.0, wall_start=float(WALL)), folding=((60, 60),))
    plain = Recorder(ManualClock(start=1000.0, wall_start=float(WALL)), folding=())
    for rec, latency in ((folded, 0.010), (plain, 0.030)):
        for second in range(0, 150, 5):
            rec.started(1000.0 + second)
            rec.finished(1000.0 + second, 1000.0 + second + latency, ok=True)
    one = RunResult.from_recorder(folded, 1150.0)
    two = RunResult.from_recorder(plain, 1150.0)
    assert one.rows[WALL].span == 60 and two.rows[WALL].span == 1

    merged = merge_results([one, two])

    first = merged.rows[WALL]
    assert (first.span, first.sent, first.ok) == (60, 24, 24)
    assert all(s >= WALL + 60 for s, r in merged.rows.items() if r.span == 1 and s != WALL)
    assert not any(WALL < s < WALL + 60 for s in merged.rows)
    assert sum(r.sent for r in merged.rows.values()) == merged.sent == 60
    union = LatencyHistogram()
    union.add(one.latency)
    union.add(two.latency)
    rows = LatencyHistogram()
    for row in merged.rows.values():
        rows.add(row.latency())
    assert rows.percentiles_us([10, 50, 90]) == union.percentiles_us([10, 50, 90])


def test_interrupted_and_memory_survive_json_and_merge() -> None:
    one, two = sample(WALL, [10, 20]), sample(WALL, [30])
    one.interrupted = True
    one.memory = [MemorySample(1, WALL + 600.0, 50 * 2**20)]
    two.memory = [MemorySample(1, WALL + 600.5, 40 * 2**20), MemorySample(2, WALL + 1200, 41)]

    again = RunResult.from_json(json.loads(json.dumps(one.to_json())))
    merged = merge_results([again, two])

    assert again.interrupted is True and again.memory == one.memory
    assert merge_results([two]).interrupted is False
    assert merged.interrupted is True
    assert [(m.snapshot, m.rss_bytes, m.processes) for m in merged.memory] == [
        (1, 90 * 2**20, 2),
        (2, 41, 1),
    ]
