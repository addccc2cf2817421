"""Release figures: parsing gateway scrapes, reset-aware deltas, success rate and p99."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.gateway.metrics import DURATION_BUCKETS, GatewayMetrics
from alwayson.metrics.exposition import parse_exposition
from alwayson.release.figures import (
    GatewaySample,
    Totals,
    VersionFigures,
    delta,
    gateway_sample,
)

INF = math.inf
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def parse_gateway_metrics(text: str) -> GatewaySample:
    """A gateway's /metrics text as the release driver reads it: through the one
    Prometheus text parser into samples, then its release counters."""
    return gateway_sample(parse_exposition(text, {}))


def scrape(metrics: GatewayMetrics) -> GatewaySample:
    return parse_gateway_metrics(metrics.render().decode())


def serve(
    metrics: GatewayMetrics,
    version: str,
    site: str,
    status: int,
    seconds: float,
    times: int = 1,
    service: str = "accounts",
) -> None:
    stats = metrics.stats_for(service, version, site)
    for _ in range(times):
        stats.observe(status, seconds)


# --------------------------------------------------------------------------- parsing


def test_a_scrape_sums_sites_and_keeps_versions_apart() -> None:
    metrics = GatewayMetrics()
    serve(metrics, "1.0.0", "jakarta", 200, 0.003, times=7)
    serve(metrics, "1.0.0", "surabaya", 200, 0.02, times=3)
    serve(metrics, "1.0.0", "surabaya", 503, 0.2)
    serve(metrics, "1.1.0", "jakarta", 404, 0.001, times=2)
    serve(metrics, "", "", 502, 0.0001, times=4)
    serve(metrics, "1.0.0", "jakarta", 200, 0.01, service="ledger")
    sample = scrape(metrics)

    stable = sample.series[("accounts", "1.0.0")]
    assert stable.by_class == {"2xx": 10, "5xx": 1}
    assert stable.requests == 11 and stable.errors == 1
    assert stable.buckets[0.005] == 7 and stable.buckets[0.025] == 10
    assert stable.buckets[0.25] == 11 and stable.buckets[INF] == 11
    assert sorted(stable.buckets) == [*DURATION_BUCKETS, INF]
    assert stable.duration_sum == pytest.approx(7 * 0.003 + 3 * 0.02 + 0.2)
    assert sample.series[("accounts", "1.1.0")].by_class == {"4xx": 2}
    assert sample.series[("accounts", "")].by_class == {"5xx": 4}
    assert sample.series[("ledger", "1.0.0")].requests == 1
    assert sample.local_responses == {}


def test_local_responses_are_read_by_exact_code() -> None:
    metrics = GatewayMetrics()
    for status in (502, 502, 503, 504):
        metrics.count_local_response("accounts", status)
    metrics.count_local_response("ledger", 502)
    sample = scrape(metrics)
    assert sample.local_responses == {
        ("accounts", "502"): 2,
        ("accounts", "503"): 1,
        ("accounts", "504"): 1,
        ("ledger", "502"): 1,
    }


def test_hand_written_exposition_and_unrelated_families() -> None:
    text = (
        "# TYPE alwayson_gateway_local_responses_total counter\n"
        'alwayson_gateway_local_responses_total{service="fx",code="502"} 3\n'
        "# TYPE alwayson_gateway_requests_total counter\n"
        'alwayson_gateway_requests_total{service="fx",version="2",site="a",code="2xx"} 5\n'
        'alwayson_gateway_requests_total{service="fx",version="2",site="b",code="2xx"} 6\n'
        "# TYPE something_else gauge\n"
        "something_else 42\n"
    )
    sample = parse_gateway_metrics(text)
    assert sample.series[("fx", "2")].by_class == {"2xx": 11}
    assert sample.series[("fx", "2")].p99 is None  # no histogram in this text
    assert sample.local_responses == {("fx", "502"): 3}


def test_text_that_is_not_exposition_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_gateway_metrics('alwayson_gateway_requests_total{service="x" 1\n')


# --------------------------------------------------------------------------- figures


def test_rates_of_a_version() -> None:
    figures = VersionFigures({"2xx": 41, "4xx": 0, "5xx": 9})
    assert figures.requests == 50
    assert figures.success_rate == pytest.approx(0.82)
    assert figures.error_rate == pytest.approx(0.18)
    assert VersionFigures({"4xx": 3}).success_rate == 1.0  # the client's fault
    empty = VersionFigures()
    assert empty.requests == 0
    assert empty.success_rate is None and empty.error_rate is None
    assert empty.p99 is None and empty.quantile(0.5) is None


def test_quantiles_interpolate_like_histogram_quantile() -> None:
    figures = VersionFigures({"2xx": 100}, {0.1: 50, 0.2: 100, 0.4: 100, INF: 100})
    assert figures.quantile(0.5) == pytest.approx(0.1)
    assert figures.quantile(0.75) == pytest.approx(0.15)
    assert figures.quantile(0.25) == pytest.approx(0.05)  # first bucket starts at 0
    assert figures.p99 == pytest.approx(0.198)
    assert figures.quantile(1.0) == pytest.approx(0.2)
    assert figures.quantile(0.0) == 0.0


def test_a_rank_in_the_inf_bucket_is_the_largest_finite_bound() -> None:
    figures = VersionFigures({"2xx": 20}, {0.1: 10, 30.0: 10, INF: 20})
    assert figures.p99 == 30.0
    assert figures.quantile(0.5) == pytest.approx(0.1)


def test_quantile_edge_cases() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        VersionFigures({"2xx": 1}, {0.1: 1, INF: 1}).quantile(1.5)
    assert VersionFigures({"2xx": 1}, {INF: 1}).p99 is None  # no finite bound
    assert VersionFigures({"2xx": 1}, {0.1: 1}).p99 is None  # no +Inf bucket
    assert VersionFigures({}, {0.1: 0, INF: 0}).p99 is None
    assert VersionFigures({}, {0.1: 0, 0.2: 5, INF: 5}).quantile(0.0) == 0.0
    # a non-monotonic delta (racing scrapes) is made monotonic, as Prometheus does
    assert VersionFigures({}, {0.1: 5, 0.2: 4, INF: 5}).quantile(0.5) == pytest.approx(0.05)


def test_figures_from_a_real_histogram() -> None:
    metrics = GatewayMetrics()
    serve(metrics, "1", "a", 200, 0.004, times=98)
    serve(metrics, "1", "a", 200, 0.3, times=2)
    figures = scrape(metrics).series[("accounts", "1")]
    # rank 99 of 100 lies in (0.25, 0.5], which holds 2: a quarter of the way is 0.3125
    assert figures.p99 == pytest.approx(0.25 + 0.25 * 0.5)
    assert figures.quantile(0.5) == pytest.approx(0.0025 + 0.0025 * (50 / 98))


def test_plus_merges_histograms_with_different_bounds() -> None:
    one = VersionFigures({"2xx": 2}, {0.1: 1, INF: 2}, 0.5)
    two = VersionFigures({"2xx": 3, "5xx": 1}, {0.2: 3, INF: 4}, 1.0)
    both = one.plus(two)
    assert both.by_class == {"2xx": 5, "5xx": 1}
    assert both.buckets == {0.1: 1, 0.2: 4, INF: 6}
    assert both.duration_sum == 1.5


# --------------------------------------------------------------------------- delta


def test_delta_is_what_happened_between_two_scrapes() -> None:
    gw1, gw2 = GatewayMetrics(), GatewayMetrics()
    serve(gw1, "1.0.0", "jakarta", 200, 0.003, times=100)
    serve(gw2, "1.0.0", "surabaya", 200, 0.003, times=50)
    gw1.count_local_response("accounts", 502)
    base = {"gw1": scrape(gw1), "gw2": scrape(gw2)}

    serve(gw1, "1.0.0", "jakarta", 200, 0.003, times=10)
    serve(gw1, "1.1.0", "jakarta", 200, 0.04, times=4)
    serve(gw2, "1.1.0", "surabaya", 500, 0.04, times=1)
    serve(gw2, "1.0.0", "surabaya", 200, 0.003, times=5)
    gw2.count_local_response("accounts", 504)
    gw2.count_local_response("accounts", 504)
    now = {"gw1": scrape(gw1), "gw2": scrape(gw2)}

    totals = delta(base, now)
    assert totals.figures("accounts", "1.0.0").by_class == {"2xx": 15}
    assert totals.figures("accounts", "1.0.0").duration_sum == pytest.approx(15 * 0.003)
    candidate = totals.figures("accounts", "1.1.0")
    assert candidate.by_class == {"2xx": 4, "5xx": 1}
    assert candidate.success_rate == pytest.approx(0.8)
    assert candidate.buckets[0.025] == 0 and candidate.buckets[0.05] == 5
    assert totals.dropped("accounts") == 2  # the 502 before the base does not count
    assert totals.local_responses == {("accounts", "504"): 2}
    assert set(totals.versions("accounts")) == {"1.0.0", "1.1.0"}
    assert totals.figures("accounts", "9.9.9") == VersionFigures()
    assert totals.figures("ledger", "1.0.0").requests == 0


def test_a_gateway_new_since_the_base_counts_whole() -> None:
    old, new = GatewayMetrics(), GatewayMetrics()
    serve(old, "1", "a", 200, 0.01, times=3)
    base = {"old": scrape(old)}
    serve(new, "1", "a", 200, 0.01, times=7)
    totals = delta(base, {"old": scrape(old), "new": scrape(new)})
    assert totals.figures("accounts", "1").requests == 7


def test_a_gateway_missing_now_counts_nothing() -> None:
    gw = GatewayMetrics()
    serve(gw, "1", "a", 200, 0.01, times=3)
    assert delta({"gw": scrape(gw)}, {}) == Totals()


def test_a_restarted_gateway_counts_its_new_values_whole() -> None:
    before = GatewayMetrics()
    serve(before, "1", "a", 200, 0.01, times=100)
    serve(before, "2", "a", 200, 0.01, times=1)
    base = {"gw": scrape(before)}
    after = GatewayMetrics()  # the restarted process: counters from zero
    serve(after, "1", "a", 200, 0.01, times=30)
    serve(after, "2", "a", 200, 0.01, times=5)  # grew past its base, but the gateway reset
    totals = delta(base, {"gw": scrape(after)})
    assert totals.figures("accounts", "1").requests == 30
    assert totals.figures("accounts", "2").requests == 5


def test_a_local_response_counter_going_down_is_a_restart_too() -> None:
    before = GatewayMetrics()
    serve(before, "1", "a", 200, 0.01, times=10)
    for _ in range(5):
        before.count_local_response("accounts", 502)
    base = {"gw": scrape(before)}
    after = GatewayMetrics()
    serve(after, "1", "a", 200, 0.01, times=12)
    after.count_local_response("accounts", 502)
    totals = delta(base, {"gw": scrape(after)})
    assert totals.figures("accounts", "1").requests == 12
    assert totals.dropped("accounts") == 1


def test_series_that_did_not_move_are_left_out() -> None:
    gw = GatewayMetrics()
    serve(gw, "1", "a", 200, 0.01, times=10)
    gw.count_local_response("accounts", 502)
    sample = scrape(gw)
    totals = delta({"gw": sample}, {"gw": sample})
    assert totals.series == {} and totals.local_responses == {}
    assert totals.versions("accounts") == {}


def test_only_keeps_one_service() -> None:
    gw = GatewayMetrics()
    serve(gw, "1", "a", 200, 0.01, service="accounts")
    serve(gw, "1", "a", 200, 0.01, service="ledger")
    gw.count_local_response("ledger", 502)
    sample = scrape(gw).only("accounts")
    assert isinstance(sample, GatewaySample)
    assert list(sample.series) == [("accounts", "1")]
    assert sample.local_responses == {}


# --------------------------------------------------------------------------- JSON


def test_samples_and_totals_survive_json() -> None:
    gw = GatewayMetrics()
    serve(gw, "1.0.0", "a", 200, 0.003, times=9)
    serve(gw, "", "", 502, 0.0001)
    gw.count_local_response("accounts", 502)
    sample = scrape(gw)
    stored = json.loads(json.dumps(sample.to_json()))
    assert GatewaySample.from_json(stored) == sample
    assert stored["series"][0]["buckets"]["+Inf"] == 1
    totals = delta({}, {"gw": sample})
    assert Totals.from_json(json.loads(json.dumps(totals.to_json()))) == totals
    assert GatewaySample.from_json({}) == GatewaySample()


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"series": {}},
        {"series": [{"service": "a"}]},
        {"series": [{"service": "a", "version": "1", "by_class": {"2xx": "many"}}]},
        {"series": [{"service": "a", "version": "1", "buckets": {"soon": 1}}]},
        {"series": [{"service": "a", "version": "1", "duration_sum": True}]},
        {"local_responses": [{"service": "a", "code": "502"}]},
    ],
)
def test_bad_stored_counts_are_value_errors(data: object) -> None:
    with pytest.raises(ValueError):
        GatewaySample.from_json(data)


# --------------------------------------------------------------------------- properties

counts = st.lists(st.integers(min_value=0, max_value=1000), min_size=5, max_size=5)


def _figures(classes: list[int]) -> VersionFigures:
    by_class = {name: n for name, n in zip(CLASSES, classes, strict=True) if n}
    total = sum(classes)
    return VersionFigures(by_class, {0.1: total // 2, 1.0: total, INF: total}, total * 0.05)


@given(base=counts, added=counts, restart=st.booleans())
def test_delta_recovers_what_was_added(base: list[int], added: list[int], restart: bool) -> None:
    """Without a restart the delta is what was added; after one, the new values whole,
    unless every counter grew past its base, which no scrape can tell from no restart."""
    now_counts = added if restart else [b + a for b, a in zip(base, added, strict=True)]
    before = GatewaySample({("s", "v"): _figures(base)})
    now = GatewaySample({("s", "v"): _figures(now_counts)})
    figures = delta({"gw": before}, {"gw": now}).figures("s", "v")
    if not restart or any(n < b for n, b in zip(now_counts, base, strict=True)):
        expected = added
    else:
        expected = [n - b for n, b in zip(now_counts, base, strict=True)]
    assert figures.requests == sum(expected)
    assert figures.by_class == _figures(expected).by_class


@given(
    per_bucket=st.lists(
        st.integers(min_value=0, max_value=50),
        min_size=len(DURATION_BUCKETS) + 1,
        max_size=len(DURATION_BUCKETS) + 1,
    ),
    low=st.floats(min_value=0.0, max_value=1.0),
    high=st.floats(min_value=0.0, max_value=1.0),
)
def test_quantiles_grow_with_q_and_stay_within_the_bounds(
    per_bucket: list[int], low: float, high: float
) -> None:
    bounds = [*DURATION_BUCKETS, INF]
    cumulative = [sum(per_bucket[: i + 1]) for i in range(len(bounds))]
    figures = VersionFigures({"2xx": cumulative[-1]}, dict(zip(bounds, cumulative, strict=True)))
    low, high = sorted((low, high))
    first, second = figures.quantile(low), figures.quantile(high)
    if cumulative[-1] == 0:
        assert first is None and second is None
        return
    assert first is not None and second is not None
    assert 0.0 <= first <= second <= DURATION_BUCKETS[-1]
