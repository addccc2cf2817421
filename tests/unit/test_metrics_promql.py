"""The PromQL engine: every supported function and operator against hand-computed values.

Each expected number is worked out in a comment from Prometheus's documented behaviour
(left-open range windows, extrapolatedRate, bucketQuantile, vector matching rules).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.metrics.model import STALE, Point, Sample
from alwayson.metrics.promql import QueryEngine, QueryError
from alwayson.metrics.promql.quantiles import bucket_quantile, bucket_quantiles
from alwayson.metrics.series import SeriesStore
from alwayson.spec.observing import Retention

T0 = 1_800_000_000.0
RETENTION = Retention(raw=3600.0, rollup_step=60.0, rollup=86400.0)
Key = tuple[tuple[str, str], ...]


def store_of(*series: tuple[str, dict[str, str], list[tuple[float, float]]]) -> SeriesStore:
    """A memory store holding each (name, labels, [(seconds after T0, value)])."""
    store = SeriesStore(None, RETENTION)
    for name, labels, samples in series:
        for offset, value in samples:
            store.append([Sample(name, labels, value)], T0 + offset)
    return store


def every(seconds: float, values: list[float], start: float = 0.0) -> list[tuple[float, float]]:
    return [(start + i * seconds, v) for i, v in enumerate(values)]


def result(engine: QueryEngine, query: str, offset: float) -> dict[Key, float]:
    points = engine.instant(query, T0 + offset)
    assert isinstance(points, list), points
    out = {tuple(sorted(p.labels.items())): p.value for p in points}
    assert len(out) == len(points)
    return out


def one(engine: QueryEngine, query: str, offset: float) -> float:
    values = list(result(engine, query, offset).values())
    assert len(values) == 1, values
    return values[0]


def key(**labels: str) -> Key:
    return tuple(sorted(labels.items()))


# req_total{code="200"} = seconds since T0 (1/s), code="500" = a tenth of it; every 10 s.
REQUESTS = store_of(
    ("req_total", {"job": "api", "code": "200"}, every(10, [10.0 * i for i in range(61)])),
    ("req_total", {"job": "api", "code": "500"}, every(10, [1.0 * i for i in range(61)])),
)
# A gauge every 10 s from T0 to T0 + 60.
TEMP = store_of(("temp", {"room": "a"}, every(10, [10, 12, 11, 15, 14, 13, 20])))
# A counter that resets after 30 (every 10 s from T0 to T0 + 50).
RESETS = store_of(("reset_total", {}, every(10, [10, 20, 30, 5, 15, 25])))
# Instant values for aggregations and operators.
CPU = store_of(
    ("cpu", {"site": "a", "instance": "1"}, [(0, 1.0)]),
    ("cpu", {"site": "a", "instance": "2"}, [(0, 3.0)]),
    ("cpu", {"site": "b", "instance": "3"}, [(0, 5.0)]),
    ("limit", {"site": "a"}, [(0, 10.0)]),
    ("limit", {"site": "b"}, [(0, 20.0)]),
    ("info", {"site": "a", "region": "eu"}, [(0, 1.0)]),
    ("dup", {"site": "a", "x": "1"}, [(0, 1.0)]),
    ("dup", {"site": "a", "x": "2"}, [(0, 1.0)]),
    ("neg", {}, [(0, -2.5)]),
)


# -- rate, increase, delta: Prometheus's extrapolation -------------------------------------


def test_rate_and_increase_extrapolate_to_the_window_edges() -> None:
    engine = QueryEngine(REQUESTS)
    # (T0+540, T0+600] holds t = 550…600: 600 - 550 = 50 over 50 s; the first sample is 10 s
    # (< 1.1 * the 10 s average) from the start, so extrapolate all the way: * 60/50 → 60.
    assert one(engine, 'increase(req_total{code="200"}[1m])', 600) == pytest.approx(60.0)
    assert one(engine, 'rate(req_total{code="200"}[1m])', 600) == pytest.approx(1.0)
    assert one(engine, 'rate(req_total{code="500"}[1m])', 600) == pytest.approx(0.1)


def test_a_counter_is_not_extrapolated_below_zero() -> None:
    engine = QueryEngine(REQUESTS)
    # At T0+100 the 5m window starts 200 s before the first sample (0 at T0): only half an
    # interval (5 s) would be added, but 0 at T0 means the counter started there: + 0 s.
    assert one(engine, 'increase(req_total{code="200"}[5m])', 100) == pytest.approx(100.0)
    # delta (a gauge) has no zero point: 100 * (100 + 5) / 100 = 105.
    assert one(engine, 'delta(req_total{code="200"}[5m])', 100) == pytest.approx(105.0)


def test_a_counter_that_started_earlier_is_extrapolated_half_an_interval() -> None:
    store = store_of(("late_total", {}, every(10, [50.0 + 10 * i for i in range(11)])))
    engine = QueryEngine(store)
    # 150 - 50 = 100 over 100 s; the zero point would be 50 s before: more than the 5 s
    # (half an interval) allowed, so * 105/100 = 105; rate over 300 s = 0.35.
    assert one(engine, "increase(late_total[5m])", 100) == pytest.approx(105.0)
    assert one(engine, "rate(late_total[5m])", 100) == pytest.approx(0.35)


def test_counter_resets_count_the_value_before_the_reset() -> None:
    engine = QueryEngine(RESETS)
    # 25 - 10 + 30 (dropped to 5) = 45; first sample 10 s after (T0-10): * 60/50 = 54.
    assert one(engine, "increase(reset_total[1m])", 50) == pytest.approx(54.0)
    assert one(engine, "rate(reset_total[1m])", 50) == pytest.approx(0.9)
    # delta ignores resets: (25 - 10) * 60/50 = 18
    assert one(engine, "delta(reset_total[1m])", 50) == pytest.approx(18.0)


def test_fewer_than_two_samples_give_no_rate() -> None:
    engine = QueryEngine(RESETS)
    assert result(engine, "rate(reset_total[5s])", 50) == {}
    assert result(engine, "increase(reset_total[10s])", 50) == {}  # (40, 50]: one sample


def test_irate_and_idelta_use_the_last_two_samples() -> None:
    engine = QueryEngine(RESETS)
    assert one(engine, "irate(reset_total[1m])", 50) == pytest.approx(1.0)  # (25-15)/10
    assert one(engine, "irate(reset_total[1m])", 30) == pytest.approx(0.5)  # reset: 5/10
    assert one(engine, "idelta(reset_total[1m])", 30) == pytest.approx(-25.0)  # 5 - 30
    assert result(engine, "irate(reset_total[1m])", 0) == {}


def test_rate_drops_the_metric_name() -> None:
    engine = QueryEngine(REQUESTS)
    assert set(result(engine, "rate(req_total[1m])", 600)) == {
        key(job="api", code="200"),
        key(job="api", code="500"),
    }


# -- *_over_time ----------------------------------------------------------------------------


def test_over_time_functions_read_the_left_open_window() -> None:
    engine = QueryEngine(TEMP)
    # (T0, T0+60] holds 12, 11, 15, 14, 13, 20 — not the 10 at T0.
    assert one(engine, "count_over_time(temp[1m])", 60) == 6
    assert one(engine, "sum_over_time(temp[1m])", 60) == 85
    assert one(engine, "avg_over_time(temp[1m])", 60) == pytest.approx(85 / 6)
    assert one(engine, "min_over_time(temp[1m])", 60) == 11
    assert one(engine, "max_over_time(temp[1m])", 60) == 20
    # sorted 11 12 13 14 15 20: rank 0.5 * 5 = 2.5 → between 13 and 14
    assert one(engine, "quantile_over_time(0.5, temp[1m])", 60) == pytest.approx(13.5)
    assert one(engine, "quantile_over_time(0.9, temp[1m])", 60) == pytest.approx(17.5)
    assert result(engine, "last_over_time(temp[1m])", 60) == {key(__name__="temp", room="a"): 20.0}
    assert result(engine, "max_over_time(temp[1m])", 60) == {key(room="a"): 20.0}


def test_delta_of_a_gauge() -> None:
    engine = QueryEngine(TEMP)
    # 20 - 12 = 8 over 50 s, first sample 10 s from the start: * 60/50 = 9.6
    assert one(engine, "delta(temp[1m])", 60) == pytest.approx(9.6)


def test_extrapolation_stops_at_1_1_average_intervals() -> None:
    engine = QueryEngine(TEMP)
    # (T0-11.5, T0+48.5] holds t = 0..40 (10 12 11 15 14): 14 - 10 = 4 over 40 s. The
    # start is 11.5 s away, more than 1.1 * 10 s: only 5 s are added; the end is 8.5 s
    # away: all of it. 4 * (40 + 5 + 8.5) / 40 = 5.35
    assert one(engine, "delta(temp[1m])", 48.5) == pytest.approx(5.35)
    # exactly 1.1 intervals (11 s) is already too far: 4 * (40 + 5 + 9) / 40 = 5.4
    assert one(engine, "delta(temp[1m])", 49) == pytest.approx(5.4)


def test_over_time_with_nan_follows_prometheus() -> None:
    store = store_of(("n", {}, every(10, [1.0, math.nan, 3.0], start=10)))
    engine = QueryEngine(store)
    assert one(engine, "max_over_time(n[1m])", 30) == 3.0  # NaN ignored unless alone
    assert one(engine, "min_over_time(n[1m])", 30) == 1.0
    assert math.isnan(one(engine, "sum_over_time(n[1m])", 30))
    assert one(engine, "count_over_time(n[1m])", 30) == 3


# -- instant selectors: lookback, staleness, offset, @ ----------------------------------------


def test_an_instant_selector_looks_back_five_minutes() -> None:
    engine = QueryEngine(store_of(("g", {}, [(0, 7.0)])))
    assert one(engine, "g", 299.999) == 7.0
    assert result(engine, "g", 300) == {}  # (t - 5m, t] is open at the left
    assert result(engine, "g", -1) == {}
    assert result(QueryEngine(engine.store, lookback=60), "g", 61) == {}


def test_a_stale_marker_hides_the_series_at_once() -> None:
    target = {"job": "instances", "instance": "x"}
    store = SeriesStore(None, RETENTION)
    store.append([Sample("up", target, 1.0), Sample("a", target, 1.0)], T0)
    store.append([Sample("up", target, 1.0)], T0 + 10)
    engine = QueryEngine(store)
    assert one(engine, "a", 5) == 1.0
    assert result(engine, "a", 10) == {}
    assert result(engine, "a", 200) == {}
    assert one(engine, "count_over_time(a[1m])", 30) == 1  # markers are not samples
    store.append([Sample("x", {}, STALE)], T0 + 20)  # a marker appended by hand works too
    assert result(engine, "x", 25) == {}


def test_offset_and_at_move_the_evaluation_time() -> None:
    engine = QueryEngine(TEMP)
    assert one(engine, "temp offset 30s", 60) == 15.0
    assert one(engine, "temp @ 1800000020", 1000) == 11.0
    assert one(engine, "max_over_time(temp[20s] offset 20s)", 60) == 15.0  # (20, 40]: 15, 14
    assert one(engine, "temp offset -10s", 40) == 13.0
    lines = engine.range("temp @ start()", T0 + 10, T0 + 40, 10)
    assert [v for _, v in lines[0].points] == [12.0, 12.0, 12.0, 12.0]
    lines = engine.range("temp @ end()", T0 + 10, T0 + 40, 10)
    assert [v for _, v in lines[0].points] == [14.0, 14.0, 14.0, 14.0]


# -- aggregations ---------------------------------------------------------------------------


def test_aggregations_by_and_without() -> None:
    engine = QueryEngine(CPU)
    assert result(engine, "sum by (site) (cpu)", 0) == {key(site="a"): 4, key(site="b"): 5}
    assert result(engine, "sum without (instance) (cpu)", 0) == {
        key(site="a"): 4,
        key(site="b"): 5,
    }
    assert result(engine, "sum(cpu)", 0) == {(): 9}
    assert result(engine, "avg by (site) (cpu)", 0) == {key(site="a"): 2, key(site="b"): 5}
    assert result(engine, "count by (site) (cpu)", 0) == {key(site="a"): 2, key(site="b"): 1}
    assert result(engine, "min(cpu)", 0) == {(): 1}
    assert result(engine, "max by (site) (cpu)", 0) == {key(site="a"): 3, key(site="b"): 5}
    assert result(engine, "quantile(0.5, cpu)", 0) == {(): 3}
    assert result(engine, "quantile(0.25, cpu)", 0) == {(): 2}  # rank 0.5: halfway 1 → 3
    assert result(engine, "quantile(2, cpu)", 0) == {(): math.inf}
    assert result(engine, "sum by (nothing) (cpu)", 0) == {(): 9}


def test_topk_and_bottomk_keep_whole_series_in_value_order() -> None:
    engine = QueryEngine(CPU)
    top = engine.instant("topk(2, cpu)", T0)
    assert top == [
        Point({"__name__": "cpu", "site": "b", "instance": "3"}, 5.0),
        Point({"__name__": "cpu", "site": "a", "instance": "2"}, 3.0),
    ]
    assert result(engine, "bottomk(1, cpu) by (site)", 0) == {
        key(__name__="cpu", site="a", instance="1"): 1.0,
        key(__name__="cpu", site="b", instance="3"): 5.0,
    }
    assert result(engine, "topk(0, cpu)", 0) == {}


def test_min_and_max_skip_nan_unless_all_are_nan() -> None:
    store = store_of(("n", {"i": "1"}, [(0, math.nan)]), ("n", {"i": "2"}, [(0, 4.0)]))
    engine = QueryEngine(store)
    assert one(engine, "max(n)", 0) == 4.0
    assert one(engine, "min(n)", 0) == 4.0
    assert math.isnan(one(engine, 'max(n{i="1"})', 0))
    assert math.isnan(one(engine, "sum(n)", 0))
    assert one(engine, "topk(1, n)", 0) == 4.0


# -- operators -----------------------------------------------------------------------------


def test_scalar_arithmetic_and_precedence() -> None:
    engine = QueryEngine(CPU)
    assert engine.instant("1 + 2 * 3", T0) == 7.0
    assert engine.instant("2 ^ 3 ^ 2", T0) == 512.0  # right-associative
    assert engine.instant("-7 % 3", T0) == -1.0  # sign of the dividend, as Go's math.Mod
    assert engine.instant("1 > bool 2", T0) == 0.0
    assert engine.instant("(1 + 1) == bool 2", T0) == 1.0
    assert engine.instant("1 / 0", T0) == math.inf
    assert math.isnan(engine.instant("0 / 0", T0))  # type: ignore[arg-type]


def test_vector_and_scalar_arithmetic_drops_the_name() -> None:
    engine = QueryEngine(CPU)
    assert result(engine, 'cpu{site="b"} * 2', 0) == {key(site="b", instance="3"): 10}
    assert result(engine, '10 - cpu{site="b"}', 0) == {key(site="b", instance="3"): 5}
    assert result(engine, 'cpu{site="b"} % 2', 0) == {key(site="b", instance="3"): 1}
    assert result(engine, 'cpu{site="b"} ^ 2', 0) == {key(site="b", instance="3"): 25}
    assert result(engine, 'cpu{site="b"} / 0', 0) == {key(site="b", instance="3"): math.inf}
    assert result(engine, "-cpu", 0) == {
        key(site="a", instance="1"): -1,
        key(site="a", instance="2"): -3,
        key(site="b", instance="3"): -5,
    }


def test_comparisons_filter_or_give_bool() -> None:
    engine = QueryEngine(CPU)
    named = {
        key(__name__="cpu", site="a", instance="2"): 3,
        key(__name__="cpu", site="b", instance="3"): 5,
    }
    assert result(engine, "cpu > 2", 0) == named
    assert result(engine, "2 < cpu", 0) == named  # the vector's value, even on the right
    assert result(engine, "cpu > bool 2", 0) == {
        key(site="a", instance="1"): 0,
        key(site="a", instance="2"): 1,
        key(site="b", instance="3"): 1,
    }
    assert result(engine, "cpu == 3", 0) == {key(__name__="cpu", site="a", instance="2"): 3}
    assert result(engine, "cpu != 3", 0).keys() == {
        key(__name__="cpu", site="a", instance="1"),
        key(__name__="cpu", site="b", instance="3"),
    }
    assert result(engine, "cpu >= 3 <= 3", 0) == {key(__name__="cpu", site="a", instance="2"): 3}


def test_one_to_one_matching_with_on_and_ignoring() -> None:
    engine = QueryEngine(CPU)
    # one-to-one with on(): the result keeps only the on() labels
    assert result(engine, "sum by (site) (cpu) / on(site) limit", 0) == {
        key(site="a"): pytest.approx(0.4),
        key(site="b"): pytest.approx(0.25),
    }
    assert result(engine, "sum by (site) (cpu) / limit", 0) == {
        key(site="a"): pytest.approx(0.4),
        key(site="b"): pytest.approx(0.25),
    }
    assert result(engine, 'cpu{site="b"} / on(site) limit', 0) == {key(site="b"): 0.25}
    store = store_of(
        ("x", {"kind": "a", "i": "1"}, [(0, 5.0)]), ("y", {"kind": "b", "i": "1"}, [(0, 2.0)])
    )
    assert result(QueryEngine(store), "x - ignoring(kind) y", 0) == {key(i="1"): 3.0}
    assert result(QueryEngine(store), "x - y", 0) == {}  # kind differs: no match


def test_group_left_and_group_right() -> None:
    engine = QueryEngine(CPU)
    assert result(engine, "cpu / on(site) group_left limit", 0) == {
        key(site="a", instance="1"): pytest.approx(0.1),
        key(site="a", instance="2"): pytest.approx(0.3),
        key(site="b", instance="3"): pytest.approx(0.25),
    }
    assert result(engine, "limit / on(site) group_right cpu", 0) == {
        key(site="a", instance="1"): pytest.approx(10.0),
        key(site="a", instance="2"): pytest.approx(10 / 3),
        key(site="b", instance="3"): pytest.approx(4.0),
    }
    assert result(engine, "cpu * on(site) group_left(region) info", 0) == {
        key(site="a", instance="1", region="eu"): 1.0,
        key(site="a", instance="2", region="eu"): 3.0,
    }
    # a comparison keeps the left value and the many side's labels, name included
    assert result(engine, "limit > on(site) group_right cpu", 0) == {
        key(__name__="cpu", site="a", instance="1"): 10.0,
        key(__name__="cpu", site="a", instance="2"): 10.0,
        key(__name__="cpu", site="b", instance="3"): 20.0,
    }


def test_matching_errors_name_the_problem() -> None:
    engine = QueryEngine(CPU)
    with pytest.raises(QueryError, match="many-to-one matching must be explicit"):
        engine.instant("cpu + on(site) limit", T0)
    with pytest.raises(QueryError, match="duplicate series for the match group"):
        engine.instant("cpu / on(site) group_left dup", T0)
    twins = QueryEngine(store_of(("a", {"x": "1"}, [(0, 1.0)]), ("b", {"x": "1"}, [(0, 2.0)])))
    with pytest.raises(QueryError, match="same labelset"):
        twins.instant('{__name__=~"a|b"} + 1', T0)
    assert result(twins, '{__name__=~"a|b"} > 0', 0).keys() == {
        key(__name__="a", x="1"),
        key(__name__="b", x="1"),
    }


def test_and_or_unless() -> None:
    engine = QueryEngine(CPU)
    assert result(engine, 'cpu and on(site) limit{site="a"}', 0).keys() == {
        key(__name__="cpu", site="a", instance="1"),
        key(__name__="cpu", site="a", instance="2"),
    }
    assert result(engine, 'cpu unless on(site) limit{site="a"}', 0) == {
        key(__name__="cpu", site="b", instance="3"): 5.0
    }
    assert result(engine, 'limit or on(site) cpu{site="b"}', 0) == {
        key(__name__="limit", site="a"): 10.0,
        key(__name__="limit", site="b"): 20.0,
    }
    assert result(engine, 'limit{site="a"} or cpu{site="b"}', 0) == {
        key(__name__="limit", site="a"): 10.0,
        key(__name__="cpu", site="b", instance="3"): 5.0,
    }
    assert result(engine, "limit and cpu", 0) == {}  # all labels but the name must match


# -- functions -----------------------------------------------------------------------------


def test_simple_functions() -> None:
    engine = QueryEngine(CPU)
    assert one(engine, "abs(neg)", 0) == 2.5
    assert one(engine, "ceil(neg)", 0) == -2.0
    assert one(engine, "floor(neg)", 0) == -3.0
    assert one(engine, "round(neg)", 0) == -2.0  # ties round up
    assert one(engine, "round(-neg)", 0) == 3.0
    assert one(engine, 'round(cpu{instance="3"} + 2, 5)', 0) == 5.0  # 7 to the nearest 5
    assert one(engine, 'round(cpu{instance="2"} / 10, 0.25)', 0) == 0.25  # 0.3
    assert result(engine, "clamp_min(cpu, 2)", 0) == {
        key(site="a", instance="1"): 2,
        key(site="a", instance="2"): 3,
        key(site="b", instance="3"): 5,
    }
    assert result(engine, "clamp_max(cpu, 2)", 0) == {
        key(site="a", instance="1"): 1,
        key(site="a", instance="2"): 2,
        key(site="b", instance="3"): 2,
    }
    assert result(engine, "clamp(cpu, 4, 2)", 0) == {}  # max below min: nothing


def test_absent_time_vector_scalar_timestamp() -> None:
    engine = QueryEngine(TEMP)
    assert result(engine, "absent(temp)", 60) == {}
    assert result(engine, 'absent(nothing{job="x", a=~"y", b="1", b="2"})', 60) == {
        key(job="x"): 1.0
    }
    assert result(engine, "absent(nothing)", 60) == {(): 1.0}
    assert engine.instant("time()", T0 + 60) == T0 + 60
    assert result(engine, "vector(3)", 60) == {(): 3.0}
    assert engine.instant("scalar(temp)", T0 + 60) == 20.0
    assert math.isnan(engine.instant("scalar(temp or vector(1))", T0 + 60))  # type: ignore[arg-type]
    # timestamp() of a selector is its sample's time; of anything else, the evaluation time
    assert one(engine, "timestamp(temp)", 65) == T0 + 60
    assert one(engine, "timestamp((temp))", 65) == T0 + 60
    assert one(engine, "timestamp(temp + 0)", 65) == T0 + 65
    assert one(engine, "time() - timestamp(temp)", 65) == pytest.approx(5.0)


BUCKETS = [("0.1", 10.0), ("0.5", 30.0), ("1", 40.0), ("+Inf", 50.0)]


def histogram(service: str = "a", buckets: list[tuple[str, float]] = BUCKETS) -> list:
    return [("lat_bucket", {"service": service, "le": le}, [(0, n)]) for le, n in buckets]


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    engine = QueryEngine(store_of(*histogram("a"), *histogram("b", [("1", 5.0), ("+Inf", 5.0)])))
    # rank 25 falls in (0.1, 0.5] holding 20: 0.1 + 0.4 * (25 - 10)/20 = 0.4
    assert result(engine, "histogram_quantile(0.5, lat_bucket)", 0) == {
        key(service="a"): pytest.approx(0.4),
        key(service="b"): pytest.approx(0.5),  # (0, 1], rank 2.5 of 5
    }
    a = 'lat_bucket{service="a"}'
    assert one(engine, f"histogram_quantile(0.1, {a})", 0) == pytest.approx(0.05)  # from 0
    assert one(engine, f"histogram_quantile(0.9, {a})", 0) == 1.0  # in +Inf: the last bound
    assert one(engine, f"histogram_quantile(1.5, {a})", 0) == math.inf
    assert one(engine, f"histogram_quantile(-1, {a})", 0) == -math.inf


def test_histogram_quantile_special_cases() -> None:
    no_inf = store_of(*histogram("a", [("0.1", 1.0), ("1", 2.0)]))
    assert math.isnan(one(QueryEngine(no_inf), "histogram_quantile(0.5, lat_bucket)", 0))
    empty = store_of(*histogram("a", [("0.1", 0.0), ("+Inf", 0.0)]))
    assert math.isnan(one(QueryEngine(empty), "histogram_quantile(0.5, lat_bucket)", 0))
    # counts that fall with the bound are forced up: (0.5 → 20) behaves as 30
    wobbly = store_of(*histogram("a", [("0.1", 10.0), ("0.5", 30.0), ("1", 20.0), ("+Inf", 50.0)]))
    assert one(QueryEngine(wobbly), "histogram_quantile(0.7, lat_bucket)", 0) == pytest.approx(1.0)
    negative = store_of(*histogram("a", [("-1", 5.0), ("+Inf", 10.0)]))
    assert one(QueryEngine(negative), "histogram_quantile(0.2, lat_bucket)", 0) == -1.0
    no_le = store_of(("lat_bucket", {"service": "a"}, [(0, 3.0)]))
    assert result(QueryEngine(no_le), "histogram_quantile(0.5, lat_bucket)", 0) == {}


def test_histogram_quantile_over_rates() -> None:
    series = []
    for le, per_10s in (("0.1", 5.0), ("0.5", 8.0), ("+Inf", 10.0)):
        series.append(
            ("d_bucket", {"le": le, "pod": "1"}, every(10, [per_10s * i for i in range(7)]))
        )
        series.append(
            ("d_bucket", {"le": le, "pod": "2"}, every(10, [per_10s * i for i in range(7)]))
        )
    engine = QueryEngine(store_of(*series))
    # Rates 0.5, 0.8, 1.0 per pod; summed by le: 1, 1.6, 2. Rank 1.3 → (0.1, 0.5] holds 0.6:
    # 0.1 + 0.4 * 0.3/0.6 = 0.3
    query = "histogram_quantile(0.65, sum by (le) (rate(d_bucket[1m])))"
    assert one(engine, query, 60) == pytest.approx(0.3)


# -- range queries -------------------------------------------------------------------------


def test_range_query_steps_and_gaps() -> None:
    store = store_of(("g", {}, [(0, 1.0), (10, 2.0)]), ("h", {}, [(400, 5.0)]))
    engine = QueryEngine(store, lookback=60)
    lines = engine.range("g", T0, T0 + 100, 30)
    assert lines[0].labels == {"__name__": "g"}
    assert lines[0].points == [(T0, 1.0), (T0 + 30, 2.0), (T0 + 60, 2.0)]  # gone at 90 > 10+60
    lines = engine.range("h or g", T0, T0 + 420, 60)
    assert [(line.labels["__name__"], [t - T0 for t, _ in line.points]) for line in lines] == [
        ("g", [0.0, 60.0]),
        ("h", [420.0]),
    ]


def test_range_query_of_a_rate_and_a_scalar() -> None:
    engine = QueryEngine(REQUESTS)
    lines = engine.range('rate(req_total{code="200"}[1m])', T0 + 60, T0 + 600, 60)
    assert [v for _, v in lines[0].points] == pytest.approx([1.0] * 10)
    scalar = engine.range("time() * 2", T0, T0 + 2, 1)
    assert scalar[0].labels == {}
    assert scalar[0].points == [(T0, 2 * T0), (T0 + 1, 2 * (T0 + 1)), (T0 + 2, 2 * (T0 + 2))]


def test_topk_in_a_range_query_picks_per_step() -> None:
    store = store_of(
        ("m", {"i": "1"}, every(10, [1.0, 5.0, 1.0])), ("m", {"i": "2"}, every(10, [2.0, 2.0, 2.0]))
    )
    lines = QueryEngine(store).range("topk(1, m)", T0, T0 + 20, 10)
    assert {line.labels["i"]: [t - T0 for t, _ in line.points] for line in lines} == {
        "1": [10.0],
        "2": [0.0, 20.0],
    }


# -- rollups behind the engine ---------------------------------------------------------------


def test_queries_over_rollups_match_raw_at_minute_resolution() -> None:
    raw = SeriesStore(None, RETENTION)
    rolled = SeriesStore(None, RETENTION)
    for i in range(720):  # one hour, every 5 s: a counter (+3 a scrape) and a sawtooth gauge
        for store in (raw, rolled):
            store.append(
                [Sample("c_total", {}, 3.0 * i), Sample("g", {}, float(i % 7))], T0 + 5 * i
            )
    rolled.append([Sample("other", {}, 0.0)], T0 + 7200)
    rolled.compact(T0 + 7200, complete=True)
    assert rolled.stats()["raw_chunks"] == 0
    exact, approximate = QueryEngine(raw), QueryEngine(rolled)
    at = 1800.0 - 0.001  # just before a minute ends: both windows cover whole minutes
    for query in (
        "sum_over_time(g[10m])",
        "count_over_time(g[10m])",
        "avg_over_time(g[10m])",
        "min_over_time(g[10m])",
        "max_over_time(g[10m])",
    ):
        assert one(approximate, query, at) == pytest.approx(one(exact, query, at)), query
    assert one(approximate, "rate(c_total[10m])", 1800) == pytest.approx(0.6, rel=0.02)
    assert one(approximate, "c_total", 1800) == one(exact, "c_total", 1795)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("rate(x[5m]", "cannot parse"),
        ("sort(x)", r"function sort\(\) is not supported"),
        ("stddev(x)", r"aggregation stddev\(\) is not supported"),
        ("rate(x[5m:1m])", "subqueries are not supported"),
        ("x[5m]", "range vector"),
        ('"text"', "string"),
        ("x atan2 y", "atan2"),
        ('x{a="b" or a="c"}', "'or' between matchers"),
        ('x{a=~"("}', "illegal regex"),  # the parser's own check
        ('x{a=~"a(?i)b"}', "invalid regular expression"),  # RE2 takes it, Python does not
    ],
)
def test_unsupported_or_bad_queries_raise_query_error(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        QueryEngine(CPU).instant(query, T0)


def test_bad_range_parameters() -> None:
    engine = QueryEngine(CPU)
    with pytest.raises(QueryError, match="step"):
        engine.range("cpu", T0, T0 + 10, 0)
    with pytest.raises(QueryError, match="before start"):
        engine.range("cpu", T0, T0 - 10, 1)
    with pytest.raises(QueryError, match="11000"):
        engine.range("cpu", T0, T0 + 20000, 1)


def test_query_error_reads_clearly() -> None:
    with pytest.raises(QueryError) as caught:
        QueryEngine(CPU).instant("sum(", T0)
    assert str(caught.value).startswith("cannot parse 'sum(': ")


# -- properties ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=12))
def test_sum_by_nothing_is_the_sum_of_the_parts(values: list[float]) -> None:
    store = store_of(*[("v", {"i": str(i)}, [(0, value)]) for i, value in enumerate(values)])
    assert one(QueryEngine(store), "sum by () (v)", 0) == pytest.approx(math.fsum(values), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=2, max_size=30),
    st.lists(st.integers(min_value=1, max_value=30), min_size=30, max_size=30),
)
def test_rate_of_a_monotonic_counter_is_never_negative(
    increments: list[float], gaps: list[int]
) -> None:
    value, offset, samples = 0.0, 0.0, []
    for step, gap in zip(increments, gaps, strict=False):
        value += step
        offset += gap
        samples.append((offset, value))
    engine = QueryEngine(store_of(("c_total", {}, samples)))
    for window in ("30s", "1m", "5m"):
        for at in (offset / 2, offset):
            for rate in result(engine, f"rate(c_total[{window}])", at).values():
                assert rate >= 0


@settings(max_examples=200, deadline=None)
@given(
    bounds=st.lists(
        st.floats(min_value=-10, max_value=10, allow_nan=False), min_size=0, max_size=6, unique=True
    ),
    counts=st.lists(st.floats(min_value=0, max_value=1e6), min_size=7, max_size=7),
    phi=st.one_of(st.floats(min_value=-0.5, max_value=1.5), st.just(math.nan)),
    with_inf=st.booleans(),
)
def test_the_vectorised_bucket_quantile_equals_prometheus_scalar_one(
    bounds: list[float], counts: list[float], phi: float, with_inf: bool
) -> None:
    les = sorted(bounds) + ([math.inf] if with_inf else [])
    if not les:
        return
    cumulative = counts[: len(les)]  # not always monotonic: both must force it the same way
    scalar = bucket_quantile(phi, list(zip(les, cumulative, strict=True)))
    column = np.array(cumulative, dtype=np.float64).reshape(-1, 1)
    vector = bucket_quantiles(np.array([phi]), np.array(les), column)[0]
    assert (math.isnan(scalar) and math.isnan(vector)) or scalar == pytest.approx(vector)
