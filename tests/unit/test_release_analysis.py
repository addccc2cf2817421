"""Release analysis: every rule of ``analyse`` on hand-built figures, and one property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.release.analysis import AnalysisSettings, analyse, milliseconds, percent
from alwayson.release.checks import CheckResult
from alwayson.release.figures import VersionFigures

BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULTS = AnalysisSettings()


def version(ok: int, errors: int = 0, latency: float = 0.004) -> VersionFigures:
    """``ok`` 2xx and ``errors`` 5xx answers, all taking ``latency`` seconds."""
    n = ok + errors
    buckets = {bound: n if latency <= bound else 0 for bound in BOUNDS}
    buckets[math.inf] = n
    by_class = {name: count for name, count in (("2xx", ok), ("5xx", errors)) if count}
    return VersionFigures(by_class, buckets, n * latency)


def p99_of(latency: float) -> float:
    figures = version(100, latency=latency)
    assert figures.p99 is not None
    return figures.p99


# --------------------------------------------------------------------------- outcomes


def test_a_healthy_candidate_passes_with_its_figures() -> None:
    result = analyse(version(50), version(500), DEFAULTS)
    assert result.outcome == "pass" and result.reasons == []
    assert result.figures == {
        "candidate_requests": 50,
        "candidate_errors": 0,
        "candidate_success_rate": 1.0,
        "candidate_p99_ms": pytest.approx(p99_of(0.004) * 1000),
        "stable_requests": 500,
        "stable_errors": 0,
        "stable_success_rate": 1.0,
        "stable_p99_ms": pytest.approx(p99_of(0.004) * 1000),
    }
    assert result.summary() == (
        "pass: candidate 100.0% of 50, p99 5.0 ms; stable 100.0% of 500, p99 5.0 ms"
    )


def test_too_few_candidate_requests_is_inconclusive() -> None:
    result = analyse(version(2, errors=1), version(500), DEFAULTS)
    assert result.outcome == "inconclusive"
    assert result.reasons == ["candidate received 3 requests, fewer than min_requests 20"]
    assert result.figures["candidate_requests"] == 3
    assert result.summary() == (
        "inconclusive: candidate received 3 requests, fewer than min_requests 20"
    )
    nothing = analyse(VersionFigures(), VersionFigures(), DEFAULTS)
    assert nothing.outcome == "inconclusive"
    assert nothing.figures["candidate_success_rate"] is None
    assert nothing.figures["candidate_p99_ms"] is None
    # min_requests 0 asks for no traffic: nothing seen, nothing wrong
    unasked = analyse(VersionFigures(), VersionFigures(), AnalysisSettings(min_requests=0))
    assert unasked.outcome == "pass" and unasked.reasons == []
    assert unasked.summary() == "pass: candidate no requests; stable no requests"


def test_a_failing_candidate_fails_with_the_figures_in_the_reason() -> None:
    result = analyse(version(41, errors=9), version(500), DEFAULTS)
    assert result.outcome == "fail"
    assert result.reasons == ["candidate success rate 82.0% (41/50) is below 99.0% (stable 100.0%)"]
    assert result.figures["candidate_success_rate"] == pytest.approx(0.82)
    assert result.summary().startswith("fail: candidate success rate 82.0%")


def test_a_candidate_as_bad_as_a_bad_stable_is_not_failed() -> None:
    stable = version(475, errors=25)  # 95.0%: the threshold drops to 94.0%
    assert analyse(version(189, errors=11), stable, DEFAULTS).outcome == "pass"  # 94.5%
    result = analyse(version(186, errors=14), stable, DEFAULTS)  # 93.0%
    assert result.reasons == [
        "candidate success rate 93.0% (186/200) is below 94.0% (stable 95.0%)"
    ]


def test_a_stable_with_few_requests_is_not_compared() -> None:
    result = analyse(version(49, errors=1), version(5), DEFAULTS)  # 98% < 99%
    assert result.reasons == [
        "candidate success rate 98.0% (49/50) is below 99.0% "
        "(stable had 5 requests, too few to compare)"
    ]
    # nor does a bad stable with few requests lower the bar
    assert analyse(version(49, errors=1), version(5, errors=5), DEFAULTS).outcome == "fail"
    # a slow stable with few requests is no excuse, a fast one no reproach
    slow = version(50, latency=0.3)
    assert analyse(slow, version(5, latency=0.003), DEFAULTS).outcome == "pass"


def test_the_success_threshold_is_the_lower_of_the_two() -> None:
    strict = AnalysisSettings(min_success_rate=0.9, success_tolerance=0.0)
    # stable 100%: threshold min(0.9, 1.0) = 0.9, so 92% passes
    assert analyse(version(46, errors=4), version(100), strict).outcome == "pass"
    assert analyse(version(44, errors=6), version(100), strict).outcome == "fail"


def test_a_slower_candidate_fails_against_the_stable() -> None:
    result = analyse(version(100, latency=0.3), version(1000, latency=0.002), DEFAULTS)
    assert result.outcome == "fail"
    assert result.reasons == [
        f"candidate p99 {milliseconds(p99_of(0.3))} is more than 100.0 ms above "
        f"the stable's {milliseconds(p99_of(0.002))}"
    ]
    assert result.reasons[0].startswith("candidate p99 497.5 ms")
    # within max_p99_increase: a pass
    assert analyse(version(100, latency=0.04), version(100, latency=0.004), DEFAULTS).reasons == []
    assert (
        analyse(
            version(100, latency=0.04),
            version(100, latency=0.004),
            AnalysisSettings(max_p99_increase=0.01),
        ).outcome
        == "fail"
    )


def test_max_p99_is_an_absolute_limit() -> None:
    settings = AnalysisSettings(max_p99=0.25)
    result = analyse(version(100, latency=0.3), version(5, latency=0.3), settings)
    assert result.reasons == ["candidate p99 497.5 ms is above max_p99 250.0 ms"]
    both = analyse(version(90, errors=10, latency=0.3), version(500, latency=0.3), settings)
    assert both.outcome == "fail" and len(both.reasons) == 2  # success rate and max_p99
    assert analyse(version(100, latency=0.2), version(5), settings).outcome == "pass"


def test_every_failing_rule_adds_its_reason() -> None:
    settings = AnalysisSettings(max_p99=0.1)
    checks = [CheckResult(False, 3.0, "increase(errors_total[1m]) < 1")]
    result = analyse(version(80, errors=20, latency=0.3), version(500), settings, checks)
    assert [reason.split(" ")[:2] for reason in result.reasons] == [
        ["candidate", "success"],
        ["candidate", "p99"],
        ["candidate", "p99"],
        ["check", "failed:"],
    ]


# --------------------------------------------------------------------------- checks


def test_failing_checks_fail_the_analysis() -> None:
    checks: list[CheckResult | tuple[bool, str]] = [
        CheckResult(True, 0.1, "rate(x[1m]) < 1"),
        CheckResult(False, 3.25, "increase(errors_total[1m]) < 1"),
        (False, "bank_requests_in_flight < 10"),
    ]
    result = analyse(version(50), version(500), DEFAULTS, checks)
    assert result.outcome == "fail"
    assert result.reasons == [
        "check failed: increase(errors_total[1m]) < 1 (value 3.25)",
        "check failed: bank_requests_in_flight < 10",
    ]
    assert result.figures["checks"] == [
        {"check": "rate(x[1m]) < 1", "ok": True, "value": 0.1},
        {"check": "increase(errors_total[1m]) < 1", "ok": False, "value": 3.25},
        {"check": "bank_requests_in_flight < 10", "ok": False, "value": None},
    ]


def test_passing_checks_pass() -> None:
    checks: list[CheckResult | tuple[bool, str]] = [
        CheckResult(True, 0.0, "x < 1"),
        (True, "y < 1"),
    ]
    assert analyse(version(50), version(500), DEFAULTS, checks).outcome == "pass"


def test_a_failing_check_fails_even_with_too_few_requests() -> None:
    result = analyse(version(3), version(500), DEFAULTS, [(False, "x < 1")])
    assert result.outcome == "fail"
    assert result.reasons == [
        "candidate received 3 requests, fewer than min_requests 20",
        "check failed: x < 1",
    ]
    assert analyse(version(3), version(500), DEFAULTS, [(True, "x < 1")]).outcome == (
        "inconclusive"
    )


# --------------------------------------------------------------------------- settings, text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_requests": -1}, "min_requests"),
        ({"min_success_rate": 1.5}, "min_success_rate"),
        ({"success_tolerance": -0.1}, "success_tolerance"),
        ({"max_p99_increase": -1.0}, "max_p99_increase"),
        ({"max_p99_increase": math.inf}, "max_p99_increase"),
        ({"max_p99": 0.0}, "max_p99"),
        ({"max_p99": math.nan}, "max_p99"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnalysisSettings(**kwargs)  # type: ignore[arg-type]


def test_percentages_never_round_a_failure_up_to_a_hundred() -> None:
    assert percent(0.82) == "82.0%"
    assert percent(1.0) == "100.0%"
    assert percent(0.9999) == "99.99%"
    assert percent(0.99999) == "99.999%"
    assert percent(0.0) == "0.0%"
    assert milliseconds(0.4975) == "497.5 ms"


# --------------------------------------------------------------------------- property

versions = st.builds(
    version,
    ok=st.integers(min_value=0, max_value=5000),
    errors=st.integers(min_value=0, max_value=5000),
    latency=st.sampled_from([0.0003, 0.002, 0.04, 0.3, 3.0, 20.0, 60.0]),
)
settings = st.builds(
    AnalysisSettings,
    min_requests=st.integers(min_value=0, max_value=100),
    min_success_rate=st.floats(min_value=0.0, max_value=1.0),
    success_tolerance=st.floats(min_value=0.0, max_value=1.0),
    max_p99_increase=st.floats(min_value=0.0, max_value=10.0),
)


@given(figures=versions, settings=settings)
def test_a_candidate_like_the_stable_never_fails_the_comparison(
    figures: VersionFigures, settings: AnalysisSettings
) -> None:
    result = analyse(figures, figures, settings)
    if figures.requests >= settings.min_requests:
        assert result.outcome == "pass", result.reasons
    else:
        assert result.outcome == "inconclusive"
