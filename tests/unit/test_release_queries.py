"""Release checks: the PromQL subset, its parse errors, and evaluation over two scrapes."""

from __future__ import annotations

import math

import pytest

from alwayson.release.queries import (
    Check,
    CheckResult,
    Matcher,
    QueryError,
    Selector,
    evaluate,
    parse_check,
)


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


# --------------------------------------------------------------------------- parsing


def test_parse_rate_with_matchers() -> None:
    check = parse_check('rate(bank_requests_total{code=~"5..", route!="/healthz"}[1m]) < 0.5')
    assert check == Check(
        text='rate(bank_requests_total{code=~"5..", route!="/healthz"}[1m]) < 0.5',
        function="rate",
        selector=Selector(
            "bank_requests_total",
            (Matcher("code", "=~", "5.."), Matcher("route", "!=", "/healthz")),
        ),
        comparison="<",
        threshold=0.5,
        range_seconds=60.0,
    )


@pytest.mark.parametrize(
    ("text", "function", "comparison", "threshold"),
    [
        ("increase(x_total[5m]) <= 3", "increase", "<=", 3.0),
        ("sum(increase(x_total[5m])) >= 1e3", "increase", ">=", 1000.0),
        ("sum ( rate ( x_total [ 1h30m ] ) ) == 0", "rate", "==", 0.0),
        ("x != -2.5", "value", "!=", -2.5),
        ("sum(x) > .5", "value", ">", 0.5),
        ("rate(x_total) < 1", "rate", "<", 1.0),
        ("x{} > +Inf", "value", ">", math.inf),
    ],
)
def test_parse_forms(text: str, function: str, comparison: str, threshold: float) -> None:
    check = parse_check(text)
    assert (check.function, check.comparison, check.threshold) == (
        function,
        comparison,
        threshold,
    )
    assert check.selector.name == "x" or check.selector.name == "x_total"


def test_parse_matchers_strings_and_ranges() -> None:
    check = parse_check(r"""x{a="1", b!='2', c=~"a\\.b|\"q\"", d!~"", } > 0""")
    assert check.selector.matchers == (
        Matcher("a", "=", "1"),
        Matcher("b", "!=", "2"),
        Matcher("c", "=~", r'a\.b|"q"'),
        Matcher("d", "!~", ""),
    )
    nameless = parse_check('{__name__=~"bank_.*_total"} > 0').selector
    assert nameless == Selector(None, (Matcher("__name__", "=~", "bank_.*_total"),))
    assert parse_check("rate(x[90s]) < 1").range_seconds == 90.0
    assert parse_check("rate(x[500ms]) < 1").range_seconds == 0.5
    assert parse_check("rate(x[1d]) < 1").range_seconds == 86400.0


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "expected a metric name or a {label matcher}, found the end"),
        ("rate(x[1m]) <", 14, "expected a number, found the end"),
        ("rate(x[1m]) 0.5", 13, "expected a comparison (<, <=, >, >=, ==, !=), found '0.5'"),
        ("rate(x[1m] < 1", 12, "expected ')', found '< 1'"),
        ("rate(x[1q]) < 1", 8, "expected a duration such as 1m, 30s or 1h30m, found '1q]) < 1'"),
        ("avg(x) < 1", 1, "unsupported function avg(): use rate, increase or sum"),
        ('x{code="5xx" < 1', 14, "expected ',' or '}', found '< 1'"),
        ("x{code=5} < 1", 8, "expected a quoted string, found '5} < 1'"),
        ('x{code~"5"} < 1', 7, "expected a label operator (=, !=, =~, !~), found '~\"5\"} < 1'"),
        ('x{code="5} < 1', 8, "unterminated string"),
        ('x{code=~"5(("} < 1', 9, "bad regular expression '5((': missing ), unterminated"),
        ("x < 1 and y", 7, "expected the end of the check, found 'and y'"),
        ("x = 1", 3, "expected a comparison (<, <=, >, >=, ==, !=), found '= 1'"),
        (
            "sum by (code) (x) < 1",
            5,
            "grouping with by/without is not supported: results are always summed",
        ),
        ("{} > 1", 1, "expected a metric name or a {label matcher}, found '{} > 1'"),
        ('x{1a="b"} > 1', 3, "expected a label name, found '1a=\"b\"} > 1'"),
    ],
)
def test_parse_errors_name_the_column(text: str, column: int, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_check(text)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.column == column
    assert error.reason.startswith(message), error.reason
    assert str(error).startswith(f"column {column}: ")


def test_long_remainders_are_shortened_in_errors() -> None:
    with pytest.raises(QueryError, match=r"found 'and somethin…'"):
        parse_check("x < 1 and something_long")


# --------------------------------------------------------------------------- evaluation


def test_rate_of_errors_over_the_window() -> None:
    before = [bank_text(ok=100, errors=0), bank_text(ok=50, errors=2)]
    after = [bank_text(ok=160, errors=12), bank_text(ok=80, errors=8)]
    result = evaluate('rate(bank_requests_total{code=~"5.."}[1m]) < 0.25', before, after, 60.0)
    assert result == CheckResult(
        ok=False,
        value=(12 + 6) / 60,
        text='rate(bank_requests_total{code=~"5.."}[1m]) < 0.25',
    )
    ok = evaluate('increase(bank_requests_total{code="200"}[1m]) >= 90', before, after, 60.0)
    assert ok.ok and ok.value == 90.0  # healthz's constant 10 adds nothing
    assert "failed" in result.describe() and "0.3" in result.describe()


def test_a_bare_selector_sums_current_values() -> None:
    after = [bank_text(ok=1, errors=0, in_flight=3), bank_text(ok=1, errors=0, in_flight=4)]
    result = evaluate("bank_requests_in_flight > 5", [], after, 30.0)
    assert result.ok and result.value == 7.0
    assert evaluate("sum(bank_requests_in_flight) <= 6", [], after, 30.0).ok is False


def test_histogram_and_label_absence_semantics() -> None:
    before = [bank_text(ok=0, errors=0)]
    after = [bank_text(ok=0, errors=0)]
    assert evaluate('bank_request_duration_seconds_bucket{le="+Inf"} == 4', before, after, 1).ok
    # a missing label matches "": only the in-flight gauge and fraud counter lack "route"
    assert evaluate('{route="", service="accounts"} == 0', before, after, 1).ok
    assert evaluate('{__name__=~"bank_requests_.*", route!~"/health.*"} == 0', before, after, 1).ok


def test_no_matching_series_is_zero() -> None:
    texts = [bank_text(ok=5, errors=0)]
    result = evaluate('rate(bank_requests_total{code=~"5.."}[1m]) < 0.5', texts, texts, 60.0)
    assert result.ok and result.value == 0.0


def test_a_restarted_target_counts_its_new_values_whole() -> None:
    before = [bank_text(ok=500, errors=3, blocked=1)]
    # restarted: the request counter went down, so the fraud counter that "grew" from 1
    # to 2 is really 2 since the restart
    after = [bank_text(ok=20, errors=0, blocked=2)]
    result = evaluate("increase(bank_fraud_decisions_total[5m]) <= 1", before, after, 300.0)
    assert result.value == 2.0 and not result.ok
    # a gauge going down is not a restart
    calm = [bank_text(ok=500, errors=3, blocked=1, in_flight=0)]
    busy = [bank_text(ok=500, errors=3, blocked=1, in_flight=9)]
    assert evaluate("increase(bank_fraud_decisions_total[5m]) == 0", busy, calm, 300.0).ok


def test_a_series_going_down_restarted_even_when_untyped() -> None:
    before = ["# TYPE jobs untyped\njobs 10\n"]
    after = ["# TYPE jobs untyped\njobs 4\n"]
    assert evaluate("increase(jobs[1m]) == 4", before, after, 60).ok


def test_targets_are_paired_by_position_or_by_id() -> None:
    one, two = bank_text(ok=10, errors=1), bank_text(ok=10, errors=5)
    # a target new in the window counts whole; one that is gone counts nothing
    assert evaluate('increase(bank_requests_total{code="500"}) == 5', [one], [one, two], 1).ok
    assert evaluate('increase(bank_requests_total{code="500"}) == 0', [one, two], [one], 1).ok
    by_id = evaluate(  # b grew by 4, c is new with 1, a is gone
        'increase(bank_requests_total{code="500"}) == 5',
        {"a": one, "b": one},
        {"b": two, "c": one},
        1,
    )
    assert by_id.ok, by_id
    with pytest.raises(TypeError):
        evaluate("x > 1", "x 1\n", "x 2\n", 1)
    with pytest.raises(TypeError):
        evaluate("x > 1", {"a": "x 1\n"}, ["x 2\n"], 1)
    with pytest.raises(TypeError):
        evaluate("x > 1", ["x 1\n"], {"a": "x 2\n"}, 1)


def test_rate_needs_a_positive_window() -> None:
    with pytest.raises(ValueError, match="positive seconds"):
        evaluate("rate(x[1m]) < 1", ["x 1\n"], ["x 2\n"], 0.0)
    assert evaluate("increase(x[1m]) == 1", ["x 1\n"], ["x 2\n"], 0.0).ok


def test_comparisons_and_nan() -> None:
    texts = ["x 2\n"]
    assert evaluate("x == 2", [], texts, 1).ok and evaluate("x != 3", [], texts, 1).ok
    assert evaluate("x >= 2", [], texts, 1).ok and not evaluate("x > 2", [], texts, 1).ok
    assert evaluate("x <= 2", [], texts, 1).ok and not evaluate("x < 2", [], texts, 1).ok
    nan = evaluate("y < 1", [], ["y NaN\n"], 1)
    assert not nan.ok and math.isnan(nan.value)
    assert nan.to_json() == {"check": "y < 1", "ok": False, "value": "nan"}
    assert evaluate("x == 2", [], texts, 1).to_json() == {"check": "x == 2", "ok": True, "value": 2}


def test_a_parsed_check_can_be_evaluated_again() -> None:
    check = parse_check("increase(x[1m]) > 0")
    assert evaluate(check, ["x 1\n"], ["x 2\n"], 60).ok
    assert not evaluate(check, ["x 2\n"], ["x 2\n"], 60).ok
