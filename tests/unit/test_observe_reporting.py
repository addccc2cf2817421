"""Utilisation and health reports from an injected range query with known answers."""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest

from alwayson.metrics.model import Line
from alwayson.observe.reporting import (
    Report,
    build_report,
    percent,
    render_html,
    report_queries,
)

START = 1_800_000_000.0
END = START + 3600.0
SITES = ["jakarta", "surabaya"]
SERVICES = ["accounts", "payments"]
OBJECTIVES = {"availability": 0.999, "latency_p95": 0.25}
MIB = 1024.0**2


class FakeStore:
    """Answers the exact PromQL of the report with known lines; records every call."""

    def __init__(self, answers: dict[str, list[Line]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, float, float, float]] = []

    def __call__(self, expr: str, start: float, end: float, step: float) -> list[Line]:
        self.calls.append((expr, start, end, step))
        return self.answers.get(expr, [])


def at_end(labels: dict[str, str], value: float) -> Line:
    return Line(labels, [(END, value)])


def over_time(labels: dict[str, str], *values: float) -> Line:
    return Line(labels, [(START + 60.0 * (i + 1), v) for i, v in enumerate(values)])


def code(site: str, service: str, status: str, value: float) -> Line:
    labels = {"service": service, "code": status}
    if site:
        labels["site"] = site
    return at_end(labels, value)


def row(site: str, service: str) -> dict[str, str]:
    return {"site": site, "service": service}


@pytest.fixture
def store() -> FakeStore:
    q = report_queries(END - START, 60.0)
    return FakeStore(
        {
            q["requests"]: [
                code("jakarta", "accounts", "2xx", 99_950),
                code("jakarta", "accounts", "5xx", 40),
                code("surabaya", "accounts", "2xx", 49_990),
                code("surabaya", "accounts", "4xx", 5),
                code("surabaya", "accounts", "5xx", 5),
                code("", "accounts", "5xx", 10),  # answered by a gateway with no backend
                code("jakarta", "payments", "2xx", 9_900),
                code("jakarta", "payments", "5xx", 100),
                code("jakarta", "ledger", "5xx", 1_000),  # not in the report's services
            ],
            q["p50"]: [at_end(row("jakarta", "accounts"), 0.02)],
            q["p95"]: [
                at_end(row("jakarta", "accounts"), 0.12),
                at_end(row("surabaya", "accounts"), float("nan")),  # no traffic
            ],
            q["p99"]: [at_end(row("jakarta", "accounts"), 0.4)],
            q["service_p95"]: [at_end({"service": "accounts"}, 0.11)],
            q["platform_p95"]: [at_end({}, 0.13)],
            q["restarts"]: [at_end(row("jakarta", "accounts"), 3)],
            q["rps"]: [over_time(row("jakarta", "accounts"), 20.0, 45.5, 30.0)],
            q["errors"]: [over_time(row("jakarta", "payments"), 0.0, 0.1, 0.0)],
            q["latency"]: [over_time(row("jakarta", "accounts"), 0.1, 0.2)],
            q["cpu"]: [
                over_time(row("jakarta", "accounts"), 0.5, 1.5),
                over_time(row("surabaya", "accounts"), 0.25, 0.25),
            ],
            q["memory"]: [over_time(row("jakarta", "accounts"), 100 * MIB, 300 * MIB)],
            q["readiness"]: [over_time(row("jakarta", "accounts"), 1.0, 0.5, 1.0, 0.5)],
            q["ready"]: [over_time(row("jakarta", "accounts"), 2, 1, 2)],
            q["site_up"]: [over_time({"site": "jakarta"}, 1, 1, 0, 1)],
            q["disk_free"]: [over_time({"site": "jakarta"}, 0.5, 0.4)],
            q["platform_cpu"]: [over_time({"site": "jakarta"}, 0.1, 0.3)],
            q["platform_memory"]: [over_time({"site": "jakarta"}, 50 * MIB)],
            q["db_primary"]: [
                over_time({"db": "main", "site": "jakarta"}, 1, 1, 0),
                over_time({"db": "main", "site": "surabaya"}, 0, 0, 1),
            ],
            q["db_up"]: [over_time({"db": "main", "site": "jakarta"}, 1, 0)],
            q["db_lag_seconds"]: [over_time({"db": "main", "site": "surabaya"}, 0.1, 2.5, 0.2)],
            q["db_lag_bytes"]: [over_time({"db": "main", "site": "surabaya"}, 0, 4096)],
        }
    )


ALERTS: list[dict[str, Any]] = [
    {
        "name": "HighErrorRate",
        "labels": {"alertname": "HighErrorRate", "severity": "critical", "site": "jakarta"},
        "annotations": {"summary": "5xx above 5% <b>now</b>"},
        "firedAt": START + 200,
    },
    {  # an event of the controller's log, as the controller passes them
        "at": START + 100,
        "kind": "alert-firing",
        "subject": "InstanceDown",
        "message": "accounts@jakarta#1 is down",
        "data": {},
        "id": 7,
    },
]


def health(store: FakeStore, **kwargs: Any) -> Report:
    return build_report("health", store, SITES, SERVICES, START, END, OBJECTIVES, ALERTS, **kwargs)


def the_row(report: Report, site: str, service: str) -> Any:
    return next(r for r in report.rows if (r.site, r.service) == (site, service))


# --- the figures ---------------------------------------------------------------------


def test_availability_is_the_share_of_answers_that_were_not_5xx(store: FakeStore) -> None:
    report = health(store)

    jakarta = the_row(report, "jakarta", "accounts")
    assert (jakarta.requests, jakarta.errors) == (99_990, 40)
    assert jakarta.availability == 1 - 40 / 99_990
    assert jakarta.error_share == 40 / 99_990
    surabaya = the_row(report, "surabaya", "accounts")
    assert (surabaya.requests, surabaya.errors) == (50_000, 5)

    accounts = next(a for a in report.availability if a.name == "accounts")
    assert (accounts.requests, accounts.errors) == (150_000, 55)  # with the 10 unrouted
    assert accounts.availability == 1 - 55 / 150_000
    assert accounts.met is True
    assert accounts.allowed_errors == pytest.approx(150.0)
    assert accounts.budget_left == pytest.approx(1 - 55 / 150)

    payments = next(a for a in report.availability if a.name == "payments")
    assert payments.availability == 1 - 100 / 10_000
    assert payments.met is False
    assert payments.budget_left == pytest.approx(1 - 100 / 10)  # overspent: negative

    platform = report.platform
    assert (platform.requests, platform.errors) == (160_000, 155)  # ledger left out
    assert platform.availability == 1 - 155 / 160_000
    assert platform.met is True
    assert (platform.p95, platform.latency_met) == (0.13, True)


def test_a_row_without_5xx_has_zero_errors_and_a_row_without_requests_has_no_data(
    store: FakeStore,
) -> None:
    q = report_queries(END - START, 60.0)
    store.answers[q["requests"]] = [code("jakarta", "accounts", "2xx", 1_000)]
    report = health(store)
    jakarta = the_row(report, "jakarta", "accounts")
    assert (jakarta.errors, jakarta.availability) == (0.0, 1.0)
    nothing = the_row(report, "surabaya", "payments")
    assert (nothing.requests, nothing.errors, nothing.availability) == (None, None, None)


def test_utilisation_latency_and_readiness_figures(store: FakeStore) -> None:
    report = health(store)
    jakarta = the_row(report, "jakarta", "accounts")
    assert jakarta.rps_avg == 99_990 / 3600
    assert jakarta.rps_peak == 45.5
    assert (jakarta.cpu_cores_avg, jakarta.cpu_cores_max) == (1.0, 1.5)
    assert (jakarta.memory_bytes_avg, jakarta.memory_bytes_max) == (200 * MIB, 300 * MIB)
    assert (jakarta.p50, jakarta.p95, jakarta.p99) == (0.02, 0.12, 0.4)
    assert (jakarta.ready_share, jakarta.ready_min, jakarta.restarts) == (0.75, 1, 3)
    assert the_row(report, "surabaya", "accounts").p95 is None  # NaN: no traffic


def test_sites_databases_and_alerts(store: FakeStore) -> None:
    report = health(store)
    jakarta = report.site_health[0]
    assert (jakarta.site, jakarta.up_share, jakarta.disk_free_min) == ("jakarta", 0.75, 0.4)
    assert (jakarta.platform_cpu_cores_avg, jakarta.platform_cpu_cores_max) == (0.2, 0.3)
    assert report.site_health[1].up_share is None

    old, new = report.databases
    assert (old.db, old.site, old.role, old.role_changes, old.up_share) == (
        "main", "jakarta", "standby", 1, 0.5,
    )  # fmt: skip
    assert (new.site, new.role, new.lag_seconds_max, new.lag_bytes_max) == (
        "surabaya", "primary", 2.5, 4096,
    )  # fmt: skip

    first, second = report.alerts
    assert (first.name, first.at, first.summary) == (
        "InstanceDown", START + 100, "accounts@jakarta#1 is down",
    )  # fmt: skip
    assert (second.name, second.severity, second.site) == ("HighErrorRate", "critical", "jakarta")


def test_the_health_verdict_says_what_a_manager_needs(store: FakeStore) -> None:
    verdict = health(store).verdict
    assert verdict == (
        "Availability 99.90% against 99.9%: met, 3.12% of the error budget left. "
        "160,000 requests, 155 answered 5xx. p95 latency 130ms (objective 250ms: met). "
        "Below objective: payments 99.00%. 2 alerts fired (1 critical). "
        "3 instance restarts. Database primaries changed 1 time(s)."
    )


def test_the_utilisation_verdict_leads_with_capacity(store: FakeStore) -> None:
    report = build_report("utilisation", store, SITES, SERVICES, START, END, OBJECTIVES, [])
    assert report.verdict == (
        "Over 1h, 160,000 requests (peak 45.5/s: accounts in jakarta). "
        "CPU peaked at 1.5 cores (accounts in jakarta). "
        "Memory peaked at 300 MiB (accounts in jakarta). "
        "Availability 99.90% against 99.9%: met, 3.12% of the error budget left."
    )


def test_an_availability_is_rounded_down_never_up() -> None:
    assert percent(0.99996, floor=True) == "99.99%"
    assert percent(0.9999, floor=True) == "99.99%"  # not 99.98 from float noise
    assert percent(0.999, floor=True) == "99.90%"
    assert percent(1.0, floor=True) == "100%"
    assert percent(0.00001) == "<0.01%"


# --- the queries ---------------------------------------------------------------------


def test_every_query_is_promql_and_whole_period_figures_are_read_at_the_end(
    store: FakeStore,
) -> None:
    report = health(store)
    assert report.step == 15.0  # 3600s / 240 points
    assert report.queries["requests"] == (
        "sum by (site, service, code) (increase(alwayson_gateway_requests_total[3600s]))"
    )
    assert report.queries["p95"] == (
        "histogram_quantile(0.95, sum by (site, service, le) "
        "(increase(alwayson_gateway_request_duration_seconds_bucket[3600s])))"
    )
    assert report.queries["cpu"] == (
        'sum by (site, service) (rate(alwayson_process_cpu_seconds_total{kind="instance"}[60s]))'
    )
    assert len(store.calls) == len(report.queries)
    for expr, start, end, step in store.calls:
        promql_parser.parse(expr)
        if "increase" in expr:
            assert (start, end, step) == (END, END, 3600.0), expr
        else:
            assert (start, end, step) == (START, END, 15.0), expr


def test_a_report_needs_a_period() -> None:
    with pytest.raises(ValueError, match="end after start"):
        build_report("health", FakeStore({}), SITES, SERVICES, END, END, OBJECTIVES, [])


# --- no data -------------------------------------------------------------------------


def test_no_data_gives_a_report_that_says_so() -> None:
    report = build_report("health", FakeStore({}), SITES, SERVICES, START, END, OBJECTIVES, [])
    assert report.no_data
    assert report.verdict.startswith("No data between 2027-01-15 08:00 UTC and 2027-01-15 09:00")
    assert report.platform.availability is None and report.platform.met is None
    assert all(r.requests is None and r.cpu_cores_avg is None for r in report.rows)
    assert json.dumps(report.to_json(), allow_nan=False)

    page = render_html(report)
    assert "No data" in page
    assert "data:image/png" not in page
    assert page.count("no data") >= 20


def test_requests_without_a_plot_series_still_count_as_data() -> None:
    q = report_queries(END - START, 60.0)
    store = FakeStore({q["requests"]: [code("jakarta", "accounts", "2xx", 10)]})
    report = build_report("health", store, SITES, SERVICES, START, END, OBJECTIVES, [])
    assert not report.no_data
    assert report.verdict.startswith("Availability 100% against 99.9%: met")


# --- JSON and HTML -------------------------------------------------------------------


def test_the_json_holds_the_figures_and_round_trips(store: FakeStore) -> None:
    report = health(store)
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["kind"] == "health"
    assert data["verdict"] == report.verdict
    first = data["rows"][0]
    assert (first["site"], first["service"], first["requests"]) == ("jakarta", "accounts", 99_990)
    assert data["platform"]["availability"] == 1 - 155 / 160_000
    assert data["series"]["rps"][0]["labels"] == {"site": "jakarta", "service": "accounts"}
    assert data["series"]["rps"][0]["points"][1] == [START + 120, 45.5]
    assert Report.from_json(data) == report


def test_the_html_is_self_contained_with_embedded_plots(store: FakeStore) -> None:
    page = render_html(health(store, title="digital-bank"))
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Health report: digital-bank</title>" in page
    assert "Availability 99.90% against 99.9%: met" in page
    assert 'class="verdict met"' in page
    assert page.count('<img src="data:image/png;base64,') == 5
    for outside in ("http://", "https://", "<script", "<link", "@import", "url(", "//cdn"):
        assert outside not in page, outside
    assert "5xx above 5% &lt;b&gt;now&lt;/b&gt;" in page  # escaped, not markup
    assert re.search(r"<td>payments</td>\s*<td>10,000</td><td>100</td>", page)
    assert "<td>99.00%</td>" in page
    assert '<span class="missed">missed</span>' in page


def test_a_missed_objective_shows_in_the_verdict_colour(store: FakeStore) -> None:
    report = build_report(
        "health", store, SITES, SERVICES, START, END, {"availability": 0.9999}, []
    )
    assert report.verdict.startswith(
        "Availability 99.90% against 99.99%: missed, 9.7 times the error budget spent."
    )
    assert 'class="verdict missed"' in render_html(report)
