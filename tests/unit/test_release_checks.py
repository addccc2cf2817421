"""Release checks: PromQL evaluated by the one engine over the store the observe loop fills,
judged by ``release.checks.judge``; and the same text as an alert rule means the same.

These replace the tests of the hand-written subset (``release/queries.py``). Where its
meaning differed from PromQL (``rate(x[1m])`` ignored its range and every check summed its
series), the expected values here are PromQL's, worked out in the comments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest

from alwayson.metrics.exposition import parse_exposition
from alwayson.metrics.model import Sample
from alwayson.metrics.promql import QueryEngine, QueryError, Scoped
from alwayson.metrics.series import SeriesStore
from alwayson.observe.alerting import AlertBook
from alwayson.release.checks import CheckResult, judge
from alwayson.spec.observing import AlertRule, Retention, check_expr_problem

T0 = 1_800_000_000.0
RETENTION = Retention(raw=3600.0, rollup_step=60.0, rollup=86400.0)


def bank_text(ok: int, errors: int, in_flight: int = 0, blocked: int = 0) -> str:
    """The shape of a bank service's /metrics."""
    lines = [
        "# HELP bank_requests_in_flight Requests being handled now.",
        "# TYPE bank_requests_in_flight gauge",
        f'bank_requests_in_flight{{service="accounts"}} {in_flight}',
        "# HELP bank_requests_total HTTP requests handled.",
        "# TYPE bank_requests_total counter",
        f'bank_requests_total{{service="accounts",method="GET",route="/accounts",code="200"}} {ok}',
        'bank_requests_total{service="accounts",method="GET",route="/healthz",code="200"} 10',
    ]
    if errors:
        lines.append(
            'bank_requests_total{service="accounts",method="POST",route="/accounts",code="500"} '
            f"{errors}"
        )
    lines += [
        "# TYPE bank_fraud_decisions_total counter",
        f'bank_fraud_decisions_total{{service="fraud",decision="block"}} {blocked}',
        "# TYPE bank_request_duration_seconds histogram",
        'bank_request_duration_seconds_bucket{route="/accounts",le="0.1"} 3',
        'bank_request_duration_seconds_bucket{route="/accounts",le="+Inf"} 4',
        'bank_request_duration_seconds_sum{route="/accounts"} 0.5',
        'bank_request_duration_seconds_count{route="/accounts"} 4',
    ]
    return "\n".join(lines) + "\n"


def scraped(rounds: Sequence[tuple[float, Mapping[str, str]]]) -> SeriesStore:
    """A store filled as the observe loop fills it: per round (seconds after T0), every
    target's text with its target labels and ``up``, appended in one call."""
    store = SeriesStore(None, RETENTION)
    for offset, texts in rounds:
        samples: list[Sample] = []
        for target, text in texts.items():
            labels = {"job": "instances", "instance": target}
            samples += parse_exposition(text, labels)
            samples.append(Sample("up", labels, 1.0))
        store.append(samples, T0 + offset)
    return store


def check(store: SeriesStore | Scoped, text: str, offset: float) -> CheckResult:
    compared = QueryEngine(store).compare(text, T0 + offset)
    return judge(text, compared.operand, compared.kept)


# Errors flat at 0 for four minutes, then 0.5 a second; scraped every 15 s up to 300 s.
def _errors_at(offset: float) -> int:
    return round(max(0.0, offset - 240.0) * 0.5)


RECENT_ERRORS = scraped(
    [(15.0 * i, {"a": bank_text(ok=15 * i, errors=_errors_at(15.0 * i))}) for i in range(21)]
)


def test_rate_honours_its_range() -> None:
    # [1m]: samples 255..300 s hold 8, 15, 22, 30 (rounded half to even): 22 in 45 s sampled, 15 s
    # to the window's start (under 1.1 intervals, and the zero point 45*8/22 = 16.4 s is
    # further), so 22 * 60/45 = 29.33 in the minute: 0.489/s.
    last_minute = check(RECENT_ERRORS, 'rate(bank_requests_total{code="500"}[1m]) < 0.25', 300)
    assert not last_minute.ok
    assert last_minute.value == pytest.approx(22 * (60 / 45) / 60)
    # [5m]: the series starts at 255 s, so the window is the same samples; but it reaches
    # back further than 1.1 intervals, so only half an interval (7.5 s) is extrapolated
    # at the start, capped by the zero point (16.4 s): 22 * 52.5/45 over 300 s.
    five_minutes = check(RECENT_ERRORS, 'rate(bank_requests_total{code="500"}[5m]) < 0.25', 300)
    assert five_minutes.ok
    assert five_minutes.value == pytest.approx(22 * (52.5 / 45) / 300)


def test_a_check_and_an_alert_rule_with_the_same_text_agree() -> None:
    store = scraped(
        [
            (15.0 * i, {"a": bank_text(ok=15 * i, errors=2 * i), "b": bank_text(ok=i, errors=i)})
            for i in range(9)
        ]
    )
    engine = QueryEngine(store)
    text = 'sum by (instance) (rate(bank_requests_total{code="500"}[1m])) > 0.1'
    book = AlertBook()

    def query(expr: str, at: float) -> list:  # type: ignore[type-arg]
        got = engine.instant(expr, at)
        assert isinstance(got, list)
        return got

    book.evaluate([AlertRule(name="Errors", expr=text)], query, T0 + 120)
    fired = {
        a["labels"]["instance"]: a["value"] for a in book.alerts(T0 + 120) if a["state"] == "firing"
    }
    compared = engine.compare(text, T0 + 120)
    kept = {p.labels["instance"]: p.value for p in compared.kept}
    # a: 2 errors a 15 s scrape, 0.133/s, fires and is kept; b: 1 per 15 s, 0.067/s, not.
    assert fired == kept
    assert kept == {"a": pytest.approx(2 / 15)}
    assert {p.labels["instance"] for p in compared.operand} == {"a", "b"}
    result = judge(text, compared.operand, compared.kept)
    assert not result.ok and result.value == pytest.approx(1 / 15)  # b is the one dropped
    holds = 'sum by (instance) (rate(bank_requests_total{code="500"}[1m])) > 0.01'
    assert check(store, holds, 120).ok


def test_increase_per_series_and_summed() -> None:
    store = scraped(
        [
            (0.0, {"a": bank_text(ok=100, errors=0), "b": bank_text(ok=50, errors=2)}),
            (30.0, {"a": bank_text(ok=130, errors=6), "b": bank_text(ok=65, errors=5)}),
            (60.0, {"a": bank_text(ok=160, errors=12), "b": bank_text(ok=80, errors=8)}),
        ]
    )
    # The window (0, 60] is left-open: it holds the samples at 30 and 60 s. a's 500s: 6,
    # 12: 6 in 30 s, extrapolated 30 s back to the window's start (within 1.1 average
    # intervals, and the zero point, 30 * 6/6 s back, is no nearer): 12. b's: 5, 8: 3,
    # likewise 6. Summed: 18.
    summed = check(store, 'sum(increase(bank_requests_total{code=~"5.."}[1m])) < 10', 60)
    assert not summed.ok and summed.value == pytest.approx(18.0)
    # Per series: healthz's constant 10 grows nothing; a's /accounts 130 -> 160 and b's
    # 65 -> 80, doubled the same way: 60 and 30, both at least 20.
    text = 'increase(bank_requests_total{code="200",route="/accounts"}[1m]) >= 20'
    assert check(store, text, 60).ok
    values = {
        p.labels["instance"]: p.value for p in QueryEngine(store).compare(text, T0 + 60).operand
    }
    assert values == {"a": pytest.approx(60.0), "b": pytest.approx(30.0)}


def test_a_bare_selector_reads_current_values_per_series() -> None:
    store = scraped([(0.0, {"a": bank_text(1, 0, in_flight=3), "b": bank_text(1, 0, in_flight=4)})])
    assert check(store, "bank_requests_in_flight > 2", 0).ok  # 3 and 4
    assert not check(store, "bank_requests_in_flight > 3", 0).ok  # 3 is dropped
    total = check(store, "sum(bank_requests_in_flight) <= 6", 0)
    assert not total.ok and total.value == 7.0


def test_histogram_and_label_absence_semantics() -> None:
    store = scraped([(0.0, {"a": bank_text(ok=0, errors=0)})])
    assert check(store, 'bank_request_duration_seconds_bucket{le="+Inf"} == 4', 0).ok
    # a missing label matches "": only the in-flight gauge and fraud counter lack "route"
    assert check(store, '{route="", service="accounts"} == 0', 0).ok
    assert check(store, '{__name__=~"bank_requests_.*", route!~"/health.*"} == 0', 0).ok


def test_no_matching_series_holds() -> None:
    store = scraped([(0.0, {"a": bank_text(5, 0)}), (15.0, {"a": bank_text(9, 0)})])
    result = check(store, 'rate(bank_requests_total{code=~"5.."}[1m]) < 0.5', 15)
    assert result.ok and math.isnan(result.value)
    assert result.to_json() == {"check": result.text, "ok": True, "value": "nan"}


def test_a_restarted_target_counts_its_new_values_as_a_counter_reset() -> None:
    store = scraped(
        [
            (0.0, {"a": bank_text(ok=500, errors=3, blocked=1)}),
            (30.0, {"a": bank_text(ok=520, errors=3, blocked=2)}),
            (60.0, {"a": bank_text(ok=20, errors=0, blocked=1)}),  # restarted
        ]
    )
    # In (0, 60]: 2 (30 s), then 1 (60 s): a counter reset, so 1 grown in 30 s, doubled
    # back to the window's start as above: 2.
    result = check(store, "increase(bank_fraud_decisions_total[1m]) <= 1", 60)
    assert not result.ok and result.value == pytest.approx(2.0)


def test_comparisons_and_nan() -> None:
    store = scraped([(0.0, {"a": "x 2\ny NaN\n"})])
    assert check(store, "x == 2", 0).ok and check(store, "x != 3", 0).ok
    assert check(store, "x >= 2", 0).ok and not check(store, "x > 2", 0).ok
    assert check(store, "x <= 2", 0).ok and not check(store, "x < 2", 0).ok
    assert check(store, "2 <= x", 0).ok and not check(store, "3 < x", 0).ok
    nan = check(store, "y < 1", 0)
    assert not nan.ok and math.isnan(nan.value)
    assert nan.to_json() == {"check": "y < 1", "ok": False, "value": "nan"}
    assert check(store, "x == 2", 0).to_json() == {"check": "x == 2", "ok": True, "value": 2}
    assert "failed" in check(store, "x > 2", 0).describe()


def test_a_scoped_check_sees_only_what_its_scope_keeps() -> None:
    store = scraped([(0.0, {"stable": "errors 9\n", "candidate": "errors 0\n"})])
    scoped = Scoped(store, lambda _, labels: labels.get("instance") == "candidate")
    assert not check(store, "errors < 1", 0).ok
    assert check(scoped, "errors < 1", 0).ok


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rate(x[1m]) <",
        "rate(x[1m]) 0.5",
        "rate(x[1m] < 1",
        "rate(x[1q]) < 1",
        'x{code="5xx" < 1',
        "x{code=5} < 1",
        'x{code~"5"} < 1',
        'x{code="5} < 1',
        "x < 1 and y",
        "x = 1",
        "{} > 1",
        'x{1a="b"} > 1',
        "x > bool 1",
        "sum(x)",
    ],
)
def test_what_is_not_a_check_is_refused_by_spec_and_engine(text: str) -> None:
    assert check_expr_problem(text) is not None
    with pytest.raises(QueryError):
        QueryEngine(SeriesStore(None, RETENTION)).compare(text, T0)
