"""The drill's figures from request outcomes: RTO, longest gap, series, detection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alwayson.drills import measuring
from alwayson.drills.model import judge
from alwayson.drills.scenarios import SCENARIOS
from alwayson.spec.drilling import SCENARIO_NAMES


def steady(log: measuring.OutcomeLog, start: float, end: float, ok: bool = True) -> None:
    for i in range(round((end - start) * 10)):
        t = start + i / 10
        log.add(t, t + 0.01, ok, "" if ok else "http 503")


def test_rto_ends_at_the_first_success_after_the_last_failure() -> None:
    log = measuring.OutcomeLog()
    steady(log, 0.0, 10.0)
    steady(log, 10.0, 13.0, ok=False)
    steady(log, 13.0, 20.0)
    assert measuring.rto(log, 10.0, 20.0) is not None
    assert abs(measuring.rto(log, 10.0, 20.0) - 3.01) < 1e-6  # type: ignore[operator]
    gap, began = measuring.longest_gap(log, 10.0, 20.0)
    assert abs(gap - 3.1) < 0.02 and abs(began - 9.91) < 0.02


def test_a_failure_after_a_success_restarts_the_recovery() -> None:
    log = measuring.OutcomeLog()
    steady(log, 10.0, 11.0, ok=False)
    log.add(11.0, 11.05, True)
    log.add(11.1, 11.2, False, "reset")  # a relapse: not recovered yet
    steady(log, 12.0, 14.0)
    assert measuring.recovered_at(log, 10.0, 14.0) == 12.01


def test_no_failure_means_the_first_new_request_served() -> None:
    log = measuring.OutcomeLog()
    log.add(9.0, 14.0, True)  # started before the fault, stalled: not a new request
    log.add(10.5, 15.5, True)  # the first request sent after the fault waited 5 s
    log.add(11.0, 15.6, True)
    assert measuring.rto(log, 10.0, 20.0) == 5.5


def test_nothing_succeeding_has_no_rto() -> None:
    log = measuring.OutcomeLog()
    steady(log, 10.0, 20.0, ok=False)
    assert measuring.rto(log, 10.0, 20.0) is None
    assert judge("rto", None, 10.0).passed is False


def test_outcomes_arriving_out_of_order_are_kept_in_completion_order() -> None:
    log = measuring.OutcomeLog()
    log.add(0.0, 2.0, True)
    log.add(0.5, 1.0, False, "timeout")
    assert [o.done for o in log.outcomes] == [1.0, 2.0]
    assert log.counts(0.0, 1.5) == {"requests": 1, "ok": 0, "failed": 1}
    assert log.errors() == {"timeout": 1}


def test_series_bins_success_rate_and_latency() -> None:
    log = measuring.OutcomeLog()
    log.add(0.0, 0.1, True)
    log.add(0.0, 0.3, False, "x")
    log.add(0.6, 0.7, True)
    rows = measuring.series(log, 0.0, 1.0, step=0.5)
    assert [r["requests"] for r in rows] == [2, 1]
    assert rows[0]["success_rate"] == 0.5 and rows[1]["success_rate"] == 1.0
    assert rows[0]["p99_ms"] == 300.0 and rows[0]["p50_ms"] == 100.0


def test_detection_takes_the_earliest_sign_after_the_fault() -> None:
    assert measuring.first_after([None, 12.0, 9.0, 11.5], 10.0) == 11.5
    assert measuring.first_after([None, 9.0], 10.0) is None


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 5), st.booleans()), max_size=200))
def test_rto_is_never_negative_and_recovery_is_a_success(
    rows: list[tuple[float, float, bool]],
) -> None:
    log = measuring.OutcomeLog()
    for start, took, ok in rows:
        log.add(start, start + took, ok)
    at = measuring.recovered_at(log, 50.0, 200.0)
    if at is not None:
        assert at >= 50.0
        assert any(o.ok and o.done == at for o in log.outcomes)
        assert all(o.ok for o in log.between(at, 200.0) if o.done > at)
    gap, _ = measuring.longest_gap(log, 50.0, 200.0)
    assert gap >= 0.0


def test_the_spec_and_the_drills_name_the_same_scenarios() -> None:
    assert set(SCENARIO_NAMES) == set(SCENARIOS)
    assert SCENARIOS["instance-kill"].max_failed == 0
    assert SCENARIOS["site-loss"].failback
    assert SCENARIOS["site-partition"].primaries
