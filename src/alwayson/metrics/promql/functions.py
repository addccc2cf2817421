"""PromQL functions: the ``*rate``/``increase``/``delta`` family, ``*_over_time``,
``histogram_quantile`` and the simple ones (``abs``, ``clamp``, ``absent``, ``timestamp``…)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import promql_parser as pp

from alwayson.metrics.promql.quantiles import bucket_quantile, bucket_quantiles, quantile
from alwayson.metrics.promql.values import (
    NAME,
    OVER_TIME_FIELD,
    SIMPLE,
    SUPPORTED_FUNCTIONS,
    Bools,
    Floats,
    QueryError,
    Scalar,
    Series,
    Value,
    dedupe,
    divide,
    drop_name,
    labels_key,
    reduce_windows,
)

if TYPE_CHECKING:
    from alwayson.metrics.promql.engine import Evaluation


# -- functions ----------------------------------------------------------------------


def call(ev: Evaluation, node: pp.Call) -> Value:
    name = node.func.name
    args = list(node.args)
    if name in ("rate", "increase", "delta"):
        return _extrapolated(ev, args[0], name)
    if name in ("irate", "idelta"):
        return _instant_change(ev, args[0], name)
    if name == "avg_over_time":
        return _avg_over_time(ev, args[0])
    if name == "quantile_over_time":
        return _quantile_over_time(ev, ev.scalar(args[0], name), args[1])
    if name in OVER_TIME_FIELD:
        return _over_time(ev, args[0], name)
    if name == "histogram_quantile":
        return _histogram_quantile(ev, ev.scalar(args[0], name), ev.vec(args[1], name))
    if name in SIMPLE:
        func = SIMPLE[name]
        return _map(ev, args[0], name, lambda v: func(v))
    if name == "round":
        to = ev.scalar(args[1], name) if len(args) > 1 else np.ones(ev.steps)
        inverse = divide(np.ones(ev.steps), to)
        return _map(ev, args[0], name, lambda v: divide(np.floor(v * inverse + 0.5), inverse))
    if name in ("clamp", "clamp_min", "clamp_max"):
        return _clamp(ev, name, args)
    if name == "absent":
        return _absent(ev, args[0])
    if name == "time":
        return Scalar(ev.ts / 1000.0)
    if name == "vector":
        values = ev.scalar(args[0], name)
        return [Series({}, values, np.ones(ev.steps, np.bool_))]
    if name == "scalar":
        return _to_scalar(ev, ev.vec(args[0], name))
    if name == "timestamp":
        return _timestamp(ev, args[0])
    raise QueryError(
        f"function {name}() is not supported; supported: {', '.join(SUPPORTED_FUNCTIONS)}"
    )


def _extrapolated(ev: Evaluation, arg: pp.Expr, function: str) -> list[Series]:
    """Prometheus's extrapolatedRate: rate, increase (counters) and delta (gauges)."""
    node = ev.range_arg(arg, function)
    counter = function != "delta"
    span = round(node.range.total_seconds() * 1000.0)
    selector = node.vector_selector
    range_end = ev.times(selector.offset, selector.at)
    range_start = range_end - span
    out = []
    for w in ev.windows(node, "last"):
        n = w.n
        ok = n >= 2
        if not ok.any():
            continue
        first = np.minimum(w.lo, len(w.t) - 1)
        last = np.maximum(w.hi - 1, 0)
        first_v = w.v[first]
        result = w.v[last] - first_v
        if counter:
            drops = np.zeros(len(w.v))
            drops[1:] = np.where(w.v[1:] < w.v[:-1], w.v[:-1], 0.0)
            result = result + reduce_windows(np.add, drops, first + 1, last + 1)
        with np.errstate(all="ignore"):
            to_start = (w.t[first] - range_start) / 1000.0
            to_end = (range_end - w.t[last]) / 1000.0
            sampled = (w.t[last] - w.t[first]) / 1000.0
            average = sampled / np.maximum(n - 1, 1)
            threshold = average * 1.1
            to_start = np.where(to_start >= threshold, average / 2, to_start)
            if counter:
                to_zero = np.where(
                    (result > 0) & (first_v >= 0), sampled * (first_v / result), to_start
                )
                to_start = np.where(to_zero < to_start, to_zero, to_start)
            to_end = np.where(to_end >= threshold, average / 2, to_end)
            factor = (sampled + to_start + to_end) / sampled
            if function == "rate":
                factor = factor / (span / 1000.0)
            result = result * factor
        out.append(Series(drop_name(w.labels), result, ok))
    return dedupe(out)


def _instant_change(ev: Evaluation, arg: pp.Expr, function: str) -> list[Series]:
    out = []
    for w in ev.windows(ev.range_arg(arg, function), "last"):
        ok = w.n >= 2
        if not ok.any():
            continue
        last = np.maximum(w.hi - 1, 0)
        before = np.maximum(w.hi - 2, 0)
        now, then = w.v[last], w.v[before]
        if function == "irate":
            with np.errstate(all="ignore"):
                change = np.where(now < then, now, now - then)
                result = change / ((w.t[last] - w.t[before]) / 1000.0)
        else:
            result = now - then
        out.append(Series(drop_name(w.labels), result, ok))
    return dedupe(out)


def _over_time(ev: Evaluation, arg: pp.Expr, function: str) -> list[Series]:
    field = OVER_TIME_FIELD[function]
    reducer = {"sum": np.add, "count": np.add, "min": np.fmin, "max": np.fmax}.get(field)
    out = []
    for w in ev.windows(ev.range_arg(arg, function), field):
        ok = w.n >= 1
        if not ok.any():
            continue
        if reducer is not None:
            result = reduce_windows(reducer, w.v, w.lo, w.hi)
            labels = drop_name(w.labels)
        else:  # last_over_time keeps the metric name, as in Prometheus
            result = w.v[np.maximum(w.hi - 1, 0)]
            labels = dict(w.labels)
        out.append(Series(labels, result, ok))
    return dedupe(out)


def _avg_over_time(ev: Evaluation, arg: pp.Expr) -> list[Series]:
    node = ev.range_arg(arg, "avg_over_time")
    counts = {labels_key(w.labels): w for w in ev.windows(node, "count")}
    out = []
    for w in ev.windows(node, "sum"):
        c = counts.get(labels_key(w.labels))
        if c is None:
            continue
        size = min(len(w.v), len(c.v))  # an append between the two reads adds at the end
        lo, hi = np.minimum(w.lo, size), np.minimum(w.hi, size)
        ok = hi > lo
        if not ok.any():
            continue
        with np.errstate(all="ignore"):
            result = reduce_windows(np.add, w.v[:size], lo, hi) / reduce_windows(
                np.add, c.v[:size], lo, hi
            )
        out.append(Series(drop_name(w.labels), result, ok))
    return dedupe(out)


def _quantile_over_time(ev: Evaluation, phi: Floats, arg: pp.Expr) -> list[Series]:
    out = []
    for w in ev.windows(ev.range_arg(arg, "quantile_over_time"), "last"):
        ok = w.n >= 1
        if not ok.any():
            continue
        result = np.full(ev.steps, math.nan)
        for i in np.flatnonzero(ok):
            result[i] = quantile(float(phi[i]), w.v[w.lo[i] : w.hi[i]].tolist())
        out.append(Series(drop_name(w.labels), result, ok))
    return dedupe(out)


def _histogram_quantile(ev: Evaluation, phi: Floats, vector: list[Series]) -> list[Series]:
    groups: dict[tuple[tuple[str, str], ...], list[tuple[float, Series]]] = {}
    for series in vector:
        try:
            bound = float(series.labels.get("le", ""))
        except ValueError:
            continue  # no bucket label, or not a number: Prometheus skips it too
        labels = {k: v for k, v in series.labels.items() if k not in (NAME, "le")}
        groups.setdefault(labels_key(labels), []).append((bound, series))
    out = []
    for key, buckets in groups.items():
        buckets.sort(key=lambda b: b[0])
        mask = np.vstack([s.present for _, s in buckets])
        present: Bools = np.asarray(mask.any(axis=0), dtype=np.bool_)
        result = np.full(ev.steps, math.nan)
        bounds = np.array([b for b, _ in buckets])
        # every bucket there: the common case, done in arrays
        whole: Bools = np.asarray(mask.all(axis=0), dtype=np.bool_)
        if len(np.unique(bounds)) == len(bounds) and whole.any():
            counts = np.vstack([s.values for _, s in buckets])
            result[whole] = bucket_quantiles(phi[whole], bounds, counts[:, whole])
        else:
            whole[:] = False
        for i in np.flatnonzero(present & ~whole):
            pairs = [(b, float(s.values[i])) for b, s in buckets if s.present[i]]
            result[i] = bucket_quantile(float(phi[i]), pairs)
        out.append(Series(dict(key), result, present))
    return out


def _map(
    ev: Evaluation, arg: pp.Expr, function: str, func: Callable[[Floats], Floats]
) -> list[Series]:
    out = []
    with np.errstate(all="ignore"):
        for series in ev.vec(arg, function):
            out.append(Series(drop_name(series.labels), func(series.values), series.present))
    return dedupe(out)


def _clamp(ev: Evaluation, name: str, args: list[pp.Expr]) -> list[Series]:
    low = np.full(ev.steps, -math.inf)
    high = np.full(ev.steps, math.inf)
    if name == "clamp":
        low, high = ev.scalar(args[1], name), ev.scalar(args[2], name)
    elif name == "clamp_min":
        low = ev.scalar(args[1], name)
    else:
        high = ev.scalar(args[1], name)
    valid = ~(high < low)  # Prometheus returns nothing when max < min
    out = []
    for series in ev.vec(args[0], name):
        values = np.maximum(low, np.minimum(high, series.values))
        present = series.present & valid
        if present.any():
            out.append(Series(drop_name(series.labels), values, present))
    return dedupe(out)


def _absent(ev: Evaluation, arg: pp.Expr) -> list[Series]:
    anything = np.zeros(ev.steps, np.bool_)
    for series in ev.vec(arg, "absent"):
        anything |= series.present
    labels: dict[str, str] = {}
    selector = arg.vector_selector if isinstance(arg, pp.MatrixSelector) else arg
    if isinstance(selector, pp.VectorSelector):
        seen: set[str] = set()
        for m in selector.matchers.matchers:
            if m.name == NAME:
                continue
            if m.op == pp.MatchOp.Equal and m.name not in seen and m.value != "":
                labels[m.name] = m.value
            else:
                labels.pop(m.name, None)
            seen.add(m.name)
    missing = ~anything
    if not missing.any():
        return []
    return [Series(labels, np.ones(ev.steps), missing)]


def _to_scalar(ev: Evaluation, vector: list[Series]) -> Scalar:
    count = np.zeros(ev.steps, np.int64)
    value = np.full(ev.steps, math.nan)
    for series in vector:
        count += series.present
        value = np.where(series.present, series.values, value)
    return Scalar(np.where(count == 1, value, math.nan))


def _timestamp(ev: Evaluation, arg: pp.Expr) -> list[Series]:
    inner = arg
    while isinstance(inner, pp.ParenExpr):
        inner = inner.expr
    out = []
    for series in ev.vec(inner, "timestamp"):
        if isinstance(inner, pp.VectorSelector) and series.times is not None:
            stamps = series.times / 1000.0  # the sample's own time, as Prometheus does
        else:
            stamps = ev.ts / 1000.0
        out.append(Series(drop_name(series.labels), stamps, series.present))
    return dedupe(out)
