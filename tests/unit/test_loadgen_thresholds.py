"""Thresholds: exact parsing, errors that say what is wrong, evaluation against results."""

from __future__ import annotations

import pytest

from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.loadgen.recording import StepStats
from alwayson.loadgen.results import RunResult
from alwayson.loadgen.thresholds import (
    Check,
    ThresholdError,
    all_passed,
    evaluate,
    parse_threshold,
    parse_thresholds,
)
from alwayson.util.errors import PermanentError


@pytest.mark.parametrize(
    ("text", "metric", "op", "limit"),
    [
        ("p99 < 200ms", "p99", "<", 200.0),
        ("p99.9 <= 1s", "p99.9", "<=", 1000.0),
        ("p99.99<1.5s", "p99.99", "<", 1500.0),
        ("p50 < 250us", "p50", "<", 0.25),
        ("max < 2m", "max", "<", 120_000.0),
        ("mean <= 80 ms", "mean", "<=", 80.0),
        ("error_rate < 0.1%", "error_rate", "<", 0.001),
        ("error_rate <= 0.002", "error_rate", "<=", 0.002),
        ("rps >= 500", "rps", ">=", 500.0),
        ("rps > 99.5/s", "rps", ">", 99.5),
        ("dropped == 0", "dropped", "==", 0.0),
        ("  failed != 3 ", "failed", "!=", 3.0),
    ],
)
def test_thresholds_parse_into_exact_checks(text: str, metric: str, op: str, limit: float) -> None:
    check = parse_threshold(text)

    assert (check.metric, check.op) == (metric, op)
    assert check.limit == pytest.approx(limit, rel=1e-12)
    assert check.expression == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99 < 200", "a latency limit needs a unit, e.g. '200ms'"),
        ("p99 < fast", "'fast' is not a duration"),
        ("p101 < 1s", "a percentile is at most p100"),
        ("p99 = 200ms", "'=' is not an operator; use '=='"),
        ("p99 <", "the value after '<' is missing"),
        ("latency < 200ms", "unknown metric 'latency'; known: pN"),
        ("error_rate < 5", "at most 100% (1.0), not 5; did you mean '5%'"),
        ("error_rate < 150%", "at most 100% (1.0), not 150%"),
        ("error_rate < lots", "'lots' is not a rate"),
        ("rps >= many", "'many' is not a rate per second"),
        ("dropped == 0.5", "dropped is a count of iterations; '0.5' is not a whole number"),
        ("p99 200ms", "write it as METRIC OPERATOR VALUE"),
        ("", "write it as METRIC OPERATOR VALUE"),
    ],
)
def test_bad_thresholds_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ThresholdError) as caught:
        parse_threshold(text)

    assert message in str(caught.value)
    assert f"threshold {text!r}" in str(caught.value)
    assert isinstance(caught.value, PermanentError)


def result_with(latencies_ms: list[float], ok: int, failed: int, dropped: int) -> RunResult:
    hist = LatencyHistogram()
    for ms in latencies_ms:
        hist.record_seconds(ms / 1000)
    step = StepStats("GET /", hist.copy(), ok=ok, failed=failed)
    return RunResult(
        started_at=0.0,
        duration=2.0,
        sent=ok + failed,
        ok=ok,
        failed=failed,
        dropped=dropped,
        latency=hist,
        steps={"GET /": step},
    )


def test_checks_are_judged_against_the_run() -> None:
    # 1000 iterations: 990 at 10 ms, 10 at 300 ms -> p99 is 10 ms, p99.9 is 300 ms
    result = result_with([10.0] * 990 + [300.0] * 10, ok=998, failed=2, dropped=1)
    checks = parse_thresholds(
        [
            "p99 < 200ms",
            "p99.9 <= 250ms",
            "error_rate < 0.1%",
            "error_rate <= 0.2%",
            "rps >= 500",
            "dropped == 0",
            "max < 1s",
        ]
    )

    outcomes = evaluate(checks, result)

    assert [(o.check.expression, o.passed) for o in outcomes] == [
        ("p99 < 200ms", True),
        ("p99.9 <= 250ms", False),
        ("error_rate < 0.1%", False),
        ("error_rate <= 0.2%", True),
        ("rps >= 500", True),
        ("dropped == 0", False),
        ("max < 1s", True),
    ]
    actual = {o.check.expression: o.actual for o in outcomes}
    assert actual["p99 < 200ms"] == pytest.approx(10.0, rel=1e-3)
    assert actual["p99.9 <= 250ms"] == pytest.approx(300.0, rel=1e-3)
    assert actual["error_rate < 0.1%"] == 0.002
    assert actual["rps >= 500"] == 500.0
    assert actual["dropped == 0"] == 1.0
    assert not all_passed(outcomes)
    assert str(outcomes[1]) == "FAIL: p99.9 <= 250ms (actual: 300.031ms)"
    assert str(outcomes[2]) == "FAIL: error_rate < 0.1% (actual: 0.2%)"
    assert str(outcomes[5]) == "FAIL: dropped == 0 (actual: 1)"


def test_a_latency_check_fails_when_nothing_finished() -> None:
    result = result_with([], ok=0, failed=0, dropped=50)

    outcomes = evaluate([parse_threshold("p99 < 1s"), parse_threshold("error_rate < 1%")], result)

    assert [(o.actual, o.passed) for o in outcomes] == [(None, False), (None, False)]
    assert str(outcomes[0]) == "FAIL: p99 < 1s (actual: none (nothing finished))"


def test_all_pass_when_every_check_holds() -> None:
    result = result_with([5.0] * 100, ok=100, failed=0, dropped=0)

    outcomes = evaluate(parse_thresholds(["p99 < 200ms", "dropped == 0", "sent >= 100"]), result)

    assert all_passed(outcomes)
    assert outcomes[0].check == Check("p99 < 200ms", "p99", "<", 200.0)
