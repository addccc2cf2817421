"""PromQL over the embedded store: an exact subset, with Prometheus's semantics.

Parsing is ``promql_parser``'s (the Prometheus grammar); evaluation is ours. A range query
is evaluated once over all its steps at a time: every value is a numpy array over the
steps plus a mask of the steps where the series exists, so ``sum by (service)
(rate(x[5m]))`` over 24 hours costs a handful of array operations per series, not a Python
loop per step.

Supported, with Prometheus's meaning:

- number literals; selectors with ``=``, ``!=``, ``=~``, ``!~``; range selectors;
  ``offset``; ``@ <time>``, ``@ start()``, ``@ end()``. An instant selector takes a
  series' newest sample in ``(t - lookback, t]`` (5 minutes by default) unless that sample
  is a staleness marker; a range ``[d]`` takes the samples in ``(t - d, t]``;
- ``rate``, ``increase``, ``delta`` (counter resets and the extrapolation of
  Prometheus's ``extrapolatedRate``), ``irate``, ``idelta``; ``avg_over_time``,
  ``min_over_time``, ``max_over_time``, ``sum_over_time``, ``count_over_time``,
  ``last_over_time``, ``quantile_over_time``; ``histogram_quantile`` over classic
  ``_bucket`` series; ``abs``, ``ceil``, ``floor``, ``round``, ``clamp``, ``clamp_min``,
  ``clamp_max``, ``absent``, ``time``, ``vector``, ``scalar``, ``timestamp``;
- ``sum``, ``avg``, ``min``, ``max``, ``count``, ``quantile``, ``topk``, ``bottomk`` with
  ``by``/``without``;
- ``+ - * / % ^``, comparisons with and without ``bool``, ``and``/``or``/``unless``,
  one-to-one matching with ``on``/``ignoring`` and many-to-one / one-to-many with
  ``group_left``/``group_right``; unary minus.

Over rollups (ranges older than ``retention.raw``) a function reads the part of a bucket
that keeps its meaning: counters and instant selectors ``last`` (the rate of a 1-in-N
subsample, exact at minute resolution), ``sum_over_time`` the sums, ``count_over_time``
the counts, ``avg_over_time`` sum / count (exact), ``min``/``max_over_time`` the minima /
maxima (exact); ``quantile_over_time`` the ``last`` values (a quantile of the subsample).

Anything else (subqueries, other functions and aggregations, ``atan2``, strings as
results) raises ``QueryError`` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt
import promql_parser as pp

from alwayson.metrics.model import Line, Point
from alwayson.metrics.series import Field, Matcher, MatchOp, SeriesData, stale_mask
from alwayson.util.errors import PermanentError

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

MAX_STEPS = 11_000  # Prometheus's limit of points per series in a range query
_NAME = "__name__"
_SAME_LABELSET = "vector cannot contain metrics with the same labelset"
_ARITHMETIC: dict[str, Callable[[Floats, Floats], Floats]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "%": np.fmod,  # Go's math.Mod: the sign of the dividend
    "^": np.power,
}
_COMPARISON: dict[str, Callable[[Floats, Floats], Bools]] = {
    "==": np.equal,
    "!=": np.not_equal,
    ">": np.greater,
    "<": np.less,
    ">=": np.greater_equal,
    "<=": np.less_equal,
}
_SET_OPS = ("and", "or", "unless")
_AGGREGATIONS = ("sum", "avg", "min", "max", "count", "quantile", "topk", "bottomk")
_SIMPLE: dict[str, Callable[[Floats], Floats]] = {"abs": np.abs, "ceil": np.ceil, "floor": np.floor}
_OVER_TIME_FIELD: dict[str, Field] = {
    "sum_over_time": "sum",
    "count_over_time": "count",
    "min_over_time": "min",
    "max_over_time": "max",
    "last_over_time": "last",
    "quantile_over_time": "last",
}
SUPPORTED_FUNCTIONS = [
    "rate",
    "increase",
    "delta",
    "irate",
    "idelta",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "histogram_quantile",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "absent",
    "time",
    "vector",
    "scalar",
    "timestamp",
]


class QueryError(PermanentError, ValueError):
    """A query that does not parse, uses what is not supported, or cannot be evaluated."""


class Source(Protocol):
    """Where selectors read from: ``SeriesStore`` (or a fake in tests)."""

    def fetch(
        self,
        name: str | None,
        matchers: Sequence[Matcher],
        start: float,
        end: float,
        *,
        field: Field = "last",
    ) -> list[SeriesData]: ...


@dataclass
class _Series:
    """One series over the evaluation steps; ``values`` mean nothing where not ``present``.
    ``times``: the sample times (ms) an instant selector picked, for ``timestamp()``."""

    labels: dict[str, str]
    values: Floats
    present: Bools
    times: Ints | None = None


@dataclass
class _Scalar:
    values: Floats


@dataclass
class _Range:
    """A range selector, read by the function that takes it (which knows the field)."""

    node: pp.MatrixSelector


@dataclass
class _String:
    value: str


_Value = _Scalar | list[_Series] | _Range | _String


@dataclass
class _Window:
    """One series' samples (stale markers dropped) and, per step, the index range of
    the samples in ``(t - range, t]``."""

    labels: dict[str, str]
    t: Ints
    v: Floats
    lo: Ints
    hi: Ints

    @property
    def n(self) -> Ints:
        return self.hi - self.lo


class QueryEngine:
    """Instant and range PromQL queries over a ``SeriesStore``."""

    def __init__(self, store: Source, lookback: float = 300.0) -> None:
        self.store = store
        self.lookback = lookback

    def instant(self, expr: str, at: float) -> list[Point] | float:
        """Evaluate ``expr`` at wall time ``at``: a list of points, or a float for a
        scalar expression."""
        tree = _parse(expr)
        at_ms = round(at * 1000.0)
        value = self._evaluation(np.array([at_ms], np.int64), at_ms, at_ms).eval(tree)
        if isinstance(value, _Scalar):
            return float(value.values[0])
        vector = _vector(value, "a query")
        points = [Point(dict(s.labels), float(s.values[0])) for s in vector if s.present[0]]
        return _order(tree, points)

    def range(self, expr: str, start: float, end: float, step: float) -> list[Line]:
        """Evaluate ``expr`` at ``start``, ``start + step``, … up to ``end``."""
        if step <= 0:
            raise QueryError("step must be more than 0")
        if end < start:
            raise QueryError("end is before start")
        tree = _parse(expr)
        start_ms, end_ms, step_ms = round(start * 1000.0), round(end * 1000.0), round(step * 1000.0)
        if step_ms < 1:
            raise QueryError("step must be at least 1ms")
        count = (end_ms - start_ms) // step_ms + 1
        if count > MAX_STEPS:
            raise QueryError(
                f"{count} steps exceed the maximum of {MAX_STEPS} points per series; "
                "use a larger step"
            )
        ts = start_ms + step_ms * np.arange(count, dtype=np.int64)
        value = self._evaluation(ts, start_ms, end_ms).eval(tree)
        seconds = (ts / 1000.0).tolist()
        if isinstance(value, _Scalar):
            return [Line({}, list(zip(seconds, value.values.tolist(), strict=True)))]
        lines = []
        for series in _vector(value, "a query"):
            index = np.flatnonzero(series.present)
            if not len(index):
                continue
            values = series.values[index].tolist()
            lines.append(
                Line(
                    dict(series.labels),
                    [(seconds[i], v) for i, v in zip(index, values, strict=True)],
                )
            )
        lines.sort(key=lambda line: sorted(line.labels.items()))
        return lines

    def _evaluation(self, ts: Ints, start_ms: int, end_ms: int) -> _Evaluation:
        return _Evaluation(self.store, round(self.lookback * 1000.0), ts, start_ms, end_ms)


class _Evaluation:
    """One query's evaluation over the steps ``ts`` (ms)."""

    def __init__(self, store: Source, lookback_ms: int, ts: Ints, start_ms: int, end_ms: int):
        self.store = store
        self.lookback_ms = lookback_ms
        self.ts = ts
        self.start_ms = start_ms
        self.end_ms = end_ms

    @property
    def steps(self) -> int:
        return len(self.ts)

    def eval(self, node: pp.Expr) -> _Value:
        if isinstance(node, pp.NumberLiteral):
            return _Scalar(np.full(self.steps, float(node.val)))
        if isinstance(node, pp.StringLiteral):
            return _String(node.val)
        if isinstance(node, pp.ParenExpr):
            return self.eval(node.expr)
        if isinstance(node, pp.UnaryExpr):
            return self._negate(self.eval(node.expr))
        if isinstance(node, pp.VectorSelector):
            return self._select(node)
        if isinstance(node, pp.MatrixSelector):
            return _Range(node)
        if isinstance(node, pp.Call):
            return self._call(node)
        if isinstance(node, pp.AggregateExpr):
            return self._aggregate(node)
        if isinstance(node, pp.BinaryExpr):
            return self._binary(node)
        if isinstance(node, pp.SubqueryExpr):
            raise QueryError(f"subqueries are not supported: {node}")
        raise QueryError(f"unsupported expression: {node}")

    # -- selectors ---------------------------------------------------------------------

    def _times(self, offset: timedelta | None, at: pp.AtModifier | None) -> Ints:
        base = self.ts
        if at is not None:
            if at.type == pp.AtModifierType.Start:
                fixed = self.start_ms
            elif at.type == pp.AtModifierType.End:
                fixed = self.end_ms
            else:
                assert at.at is not None
                fixed = round(at.at.timestamp() * 1000.0)
            base = np.full(self.steps, fixed, np.int64)
        if offset:
            base = base - round(offset.total_seconds() * 1000.0)
        return base

    def _fetch(
        self, node: pp.VectorSelector, lo_ms: int, hi_ms: int, field: Field
    ) -> list[SeriesData]:
        name, matchers = _matchers(node)
        return self.store.fetch(name, matchers, lo_ms / 1000.0, hi_ms / 1000.0, field=field)

    def _select(self, node: pp.VectorSelector) -> list[_Series]:
        eff = self._times(node.offset, node.at)
        found = self._fetch(node, int(eff.min()) - self.lookback_ms, int(eff.max()), "last")
        out = []
        for data in found:
            t = _ms(data.times)
            idx = np.searchsorted(t, eff, side="right") - 1
            pick = np.maximum(idx, 0)
            present = (
                (idx >= 0) & (t[pick] > eff - self.lookback_ms) & ~stale_mask(data.values)[pick]
            )
            if present.any():
                labels = {_NAME: data.name, **data.labels}
                out.append(_Series(labels, data.values[pick], present, t[pick]))
        return out

    def _windows(self, node: pp.MatrixSelector, field: Field) -> list[_Window]:
        selector = node.vector_selector
        eff = self._times(selector.offset, selector.at)
        span = round(node.range.total_seconds() * 1000.0)
        found = self._fetch(selector, int(eff.min()) - span, int(eff.max()), field)
        out = []
        for data in found:
            fresh = ~stale_mask(data.values)
            t, v = _ms(data.times)[fresh], data.values[fresh]
            lo = np.searchsorted(t, eff - span, side="right").astype(np.int64)
            hi = np.searchsorted(t, eff, side="right").astype(np.int64)
            out.append(_Window({_NAME: data.name, **data.labels}, t, v, lo, hi))
        return out

    def _range_arg(self, node: pp.Expr, function: str) -> pp.MatrixSelector:
        if isinstance(node, pp.MatrixSelector):
            return node
        if isinstance(node, pp.SubqueryExpr):
            raise QueryError(f"subqueries are not supported: {function}({node})")
        raise QueryError(f"{function}() needs a range selector such as x[5m], got {node}")

    # -- functions ----------------------------------------------------------------------

    def _call(self, node: pp.Call) -> _Value:
        name = node.func.name
        args = list(node.args)
        if name in ("rate", "increase", "delta"):
            return self._extrapolated(args[0], name)
        if name in ("irate", "idelta"):
            return self._instant_change(args[0], name)
        if name == "avg_over_time":
            return self._avg_over_time(args[0])
        if name == "quantile_over_time":
            return self._quantile_over_time(self._scalar(args[0], name), args[1])
        if name in _OVER_TIME_FIELD:
            return self._over_time(args[0], name)
        if name == "histogram_quantile":
            return self._histogram_quantile(self._scalar(args[0], name), self._vec(args[1], name))
        if name in _SIMPLE:
            func = _SIMPLE[name]
            return self._map(args[0], name, lambda v: func(v))
        if name == "round":
            to = self._scalar(args[1], name) if len(args) > 1 else np.ones(self.steps)
            inverse = _divide(np.ones(self.steps), to)
            return self._map(args[0], name, lambda v: _divide(np.floor(v * inverse + 0.5), inverse))
        if name in ("clamp", "clamp_min", "clamp_max"):
            return self._clamp(name, args)
        if name == "absent":
            return self._absent(args[0])
        if name == "time":
            return _Scalar(self.ts / 1000.0)
        if name == "vector":
            values = self._scalar(args[0], name)
            return [_Series({}, values, np.ones(self.steps, np.bool_))]
        if name == "scalar":
            return self._to_scalar(self._vec(args[0], name))
        if name == "timestamp":
            return self._timestamp(args[0])
        raise QueryError(
            f"function {name}() is not supported; supported: {', '.join(SUPPORTED_FUNCTIONS)}"
        )

    def _extrapolated(self, arg: pp.Expr, function: str) -> list[_Series]:
        """Prometheus's extrapolatedRate: rate, increase (counters) and delta (gauges)."""
        node = self._range_arg(arg, function)
        counter = function != "delta"
        span = round(node.range.total_seconds() * 1000.0)
        selector = node.vector_selector
        range_end = self._times(selector.offset, selector.at)
        range_start = range_end - span
        out = []
        for w in self._windows(node, "last"):
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
                result = result + _reduce_windows(np.add, drops, first + 1, last + 1)
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
            out.append(_Series(_drop_name(w.labels), result, ok))
        return _dedupe(out)

    def _instant_change(self, arg: pp.Expr, function: str) -> list[_Series]:
        out = []
        for w in self._windows(self._range_arg(arg, function), "last"):
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
            out.append(_Series(_drop_name(w.labels), result, ok))
        return _dedupe(out)

    def _over_time(self, arg: pp.Expr, function: str) -> list[_Series]:
        field = _OVER_TIME_FIELD[function]
        reducer = {"sum": np.add, "count": np.add, "min": np.fmin, "max": np.fmax}.get(field)
        out = []
        for w in self._windows(self._range_arg(arg, function), field):
            ok = w.n >= 1
            if not ok.any():
                continue
            if reducer is not None:
                result = _reduce_windows(reducer, w.v, w.lo, w.hi)
                labels = _drop_name(w.labels)
            else:  # last_over_time keeps the metric name, as in Prometheus
                result = w.v[np.maximum(w.hi - 1, 0)]
                labels = dict(w.labels)
            out.append(_Series(labels, result, ok))
        return _dedupe(out)

    def _avg_over_time(self, arg: pp.Expr) -> list[_Series]:
        node = self._range_arg(arg, "avg_over_time")
        counts = {_key(w.labels): w for w in self._windows(node, "count")}
        out = []
        for w in self._windows(node, "sum"):
            c = counts.get(_key(w.labels))
            if c is None:
                continue
            size = min(len(w.v), len(c.v))  # an append between the two reads adds at the end
            lo, hi = np.minimum(w.lo, size), np.minimum(w.hi, size)
            ok = hi > lo
            if not ok.any():
                continue
            with np.errstate(all="ignore"):
                result = _reduce_windows(np.add, w.v[:size], lo, hi) / _reduce_windows(
                    np.add, c.v[:size], lo, hi
                )
            out.append(_Series(_drop_name(w.labels), result, ok))
        return _dedupe(out)

    def _quantile_over_time(self, phi: Floats, arg: pp.Expr) -> list[_Series]:
        out = []
        for w in self._windows(self._range_arg(arg, "quantile_over_time"), "last"):
            ok = w.n >= 1
            if not ok.any():
                continue
            result = np.full(self.steps, math.nan)
            for i in np.flatnonzero(ok):
                result[i] = _quantile(float(phi[i]), w.v[w.lo[i] : w.hi[i]].tolist())
            out.append(_Series(_drop_name(w.labels), result, ok))
        return _dedupe(out)

    def _histogram_quantile(self, phi: Floats, vector: list[_Series]) -> list[_Series]:
        groups: dict[tuple[tuple[str, str], ...], list[tuple[float, _Series]]] = {}
        for series in vector:
            try:
                bound = float(series.labels.get("le", ""))
            except ValueError:
                continue  # no bucket label, or not a number: Prometheus skips it too
            labels = {k: v for k, v in series.labels.items() if k not in (_NAME, "le")}
            groups.setdefault(_key(labels), []).append((bound, series))
        out = []
        for key, buckets in groups.items():
            buckets.sort(key=lambda b: b[0])
            mask = np.vstack([s.present for _, s in buckets])
            present: Bools = np.asarray(mask.any(axis=0), dtype=np.bool_)
            result = np.full(self.steps, math.nan)
            bounds = np.array([b for b, _ in buckets])
            # every bucket there: the common case, done in arrays
            whole: Bools = np.asarray(mask.all(axis=0), dtype=np.bool_)
            if len(np.unique(bounds)) == len(bounds) and whole.any():
                counts = np.vstack([s.values for _, s in buckets])
                result[whole] = _bucket_quantiles(phi[whole], bounds, counts[:, whole])
            else:
                whole[:] = False
            for i in np.flatnonzero(present & ~whole):
                pairs = [(b, float(s.values[i])) for b, s in buckets if s.present[i]]
                result[i] = _bucket_quantile(float(phi[i]), pairs)
            out.append(_Series(dict(key), result, present))
        return out

    def _map(self, arg: pp.Expr, function: str, func: Callable[[Floats], Floats]) -> list[_Series]:
        out = []
        with np.errstate(all="ignore"):
            for series in self._vec(arg, function):
                out.append(_Series(_drop_name(series.labels), func(series.values), series.present))
        return _dedupe(out)

    def _clamp(self, name: str, args: list[pp.Expr]) -> list[_Series]:
        low = np.full(self.steps, -math.inf)
        high = np.full(self.steps, math.inf)
        if name == "clamp":
            low, high = self._scalar(args[1], name), self._scalar(args[2], name)
        elif name == "clamp_min":
            low = self._scalar(args[1], name)
        else:
            high = self._scalar(args[1], name)
        valid = ~(high < low)  # Prometheus returns nothing when max < min
        out = []
        for series in self._vec(args[0], name):
            values = np.maximum(low, np.minimum(high, series.values))
            present = series.present & valid
            if present.any():
                out.append(_Series(_drop_name(series.labels), values, present))
        return _dedupe(out)

    def _absent(self, arg: pp.Expr) -> list[_Series]:
        anything = np.zeros(self.steps, np.bool_)
        for series in self._vec(arg, "absent"):
            anything |= series.present
        labels: dict[str, str] = {}
        selector = arg.vector_selector if isinstance(arg, pp.MatrixSelector) else arg
        if isinstance(selector, pp.VectorSelector):
            seen: set[str] = set()
            for m in selector.matchers.matchers:
                if m.name == _NAME:
                    continue
                if m.op == pp.MatchOp.Equal and m.name not in seen and m.value != "":
                    labels[m.name] = m.value
                else:
                    labels.pop(m.name, None)
                seen.add(m.name)
        missing = ~anything
        if not missing.any():
            return []
        return [_Series(labels, np.ones(self.steps), missing)]

    def _to_scalar(self, vector: list[_Series]) -> _Scalar:
        count = np.zeros(self.steps, np.int64)
        value = np.full(self.steps, math.nan)
        for series in vector:
            count += series.present
            value = np.where(series.present, series.values, value)
        return _Scalar(np.where(count == 1, value, math.nan))

    def _timestamp(self, arg: pp.Expr) -> list[_Series]:
        inner = arg
        while isinstance(inner, pp.ParenExpr):
            inner = inner.expr
        out = []
        for series in self._vec(inner, "timestamp"):
            if isinstance(inner, pp.VectorSelector) and series.times is not None:
                stamps = series.times / 1000.0  # the sample's own time, as Prometheus does
            else:
                stamps = self.ts / 1000.0
            out.append(_Series(_drop_name(series.labels), stamps, series.present))
        return _dedupe(out)

    # -- aggregations -------------------------------------------------------------------

    def _aggregate(self, node: pp.AggregateExpr) -> list[_Series]:
        op = str(node.op)
        if op not in _AGGREGATIONS:
            raise QueryError(
                f"aggregation {op}() is not supported; supported: {', '.join(_AGGREGATIONS)}"
            )
        vector = self._vec(node.expr, f"{op}()")
        param = self._scalar(node.param, op) if op in ("quantile", "topk", "bottomk") else None
        modifier = node.modifier
        names = set(modifier.labels) if modifier is not None else set()
        without = modifier is not None and modifier.type == pp.AggModifierType.Without

        def grouping(labels: dict[str, str]) -> dict[str, str]:
            if without:
                return {k: v for k, v in labels.items() if k not in names and k != _NAME}
            return {k: v for k, v in labels.items() if k in names}

        groups: dict[tuple[tuple[str, str], ...], list[_Series]] = {}
        for series in vector:
            groups.setdefault(_key(grouping(series.labels)), []).append(series)
        if op in ("topk", "bottomk"):
            assert param is not None
            return self._top(op, param, groups)
        out = []
        for key, members in sorted(groups.items()):
            values = np.vstack([s.values for s in members])
            mask = np.vstack([s.present for s in members])
            present: Bools = np.asarray(mask.any(axis=0), dtype=np.bool_)
            with np.errstate(all="ignore"):
                if op in ("sum", "avg"):
                    result = np.where(mask, values, 0.0).sum(axis=0)
                    if op == "avg":
                        result = result / mask.sum(axis=0)
                elif op == "count":
                    result = mask.sum(axis=0).astype(np.float64)
                elif op in ("min", "max"):
                    reduce = np.fmin if op == "min" else np.fmax
                    result = reduce.reduce(np.where(mask, values, math.nan), axis=0)
                else:  # quantile
                    assert param is not None
                    result = np.full(self.steps, math.nan)
                    for i in np.flatnonzero(present):
                        result[i] = _quantile(float(param[i]), values[mask[:, i], i].tolist())
            out.append(_Series(dict(key), result, present))
        return out

    def _top(
        self, op: str, param: Floats, groups: dict[tuple[tuple[str, str], ...], list[_Series]]
    ) -> list[_Series]:
        chosen = {id(s): np.zeros(self.steps, np.bool_) for m in groups.values() for s in m}
        for i in range(self.steps):
            k_value = float(param[i])
            if not math.isfinite(k_value):
                raise QueryError(f"{op}: the number of series must be finite, got {k_value}")
            k = int(k_value)
            if k < 1:
                continue
            for members in groups.values():
                here = [s for s in members if s.present[i]]
                # NaN ranks last whichever way round, as in Prometheus.
                if op == "topk":
                    here.sort(key=lambda s: (math.isnan(s.values[i]), -s.values[i]))
                else:
                    here.sort(key=lambda s: (math.isnan(s.values[i]), s.values[i]))
                for s in here[:k]:
                    chosen[id(s)][i] = True
        out = []
        for members in groups.values():
            for s in members:
                mask = chosen[id(s)]
                if mask.any():
                    out.append(_Series(dict(s.labels), s.values, mask, s.times))
        return out

    # -- operators ----------------------------------------------------------------------

    def _negate(self, value: _Value) -> _Value:
        if isinstance(value, _Scalar):
            return _Scalar(-value.values)
        return _dedupe(
            [_Series(_drop_name(s.labels), -s.values, s.present) for s in _vector(value, "-")]
        )

    def _binary(self, node: pp.BinaryExpr) -> _Value:
        op = str(node.op)
        modifier = node.modifier
        lhs = self.eval(node.lhs)
        rhs = self.eval(node.rhs)
        if op in _SET_OPS:
            return _set_operation(op, _vector(lhs, op), _vector(rhs, op), modifier)
        if op not in _ARITHMETIC and op not in _COMPARISON:
            raise QueryError(f"operator {op!r} is not supported")
        return_bool = bool(modifier is not None and modifier.return_bool)
        if isinstance(lhs, _Scalar) and isinstance(rhs, _Scalar):
            with np.errstate(all="ignore"):
                if op in _ARITHMETIC:
                    return _Scalar(_ARITHMETIC[op](lhs.values, rhs.values))
                return _Scalar(_COMPARISON[op](lhs.values, rhs.values).astype(np.float64))
        if isinstance(rhs, _Scalar):
            return _with_scalar(op, _vector(lhs, op), rhs.values, False, return_bool)
        if isinstance(lhs, _Scalar):
            return _with_scalar(op, _vector(rhs, op), lhs.values, True, return_bool)
        return _match_vectors(op, _vector(lhs, op), _vector(rhs, op), modifier, return_bool)

    # -- argument helpers ---------------------------------------------------------------

    def _vec(self, node: pp.Expr, what: str) -> list[_Series]:
        return _vector(self.eval(node), what)

    def _scalar(self, node: pp.Expr | None, what: str) -> Floats:
        if node is None:
            raise QueryError(f"{what}: a number is missing")
        value = self.eval(node)
        if not isinstance(value, _Scalar):
            raise QueryError(f"{what}: expected a scalar, got {_kind(value)} ({node})")
        return value.values


# -- operators on values ---------------------------------------------------------------


def _with_scalar(
    op: str, vector: list[_Series], scalar: Floats, swapped: bool, return_bool: bool
) -> list[_Series]:
    out = []
    with np.errstate(all="ignore"):
        for s in vector:
            left, right = (scalar, s.values) if swapped else (s.values, scalar)
            if op in _ARITHMETIC:
                out.append(_Series(_drop_name(s.labels), _ARITHMETIC[op](left, right), s.present))
                continue
            keep = _COMPARISON[op](left, right)
            if return_bool:
                out.append(_Series(_drop_name(s.labels), keep.astype(np.float64), s.present))
            elif (s.present & keep).any():
                # The vector's value stays, even when the scalar is on the left.
                out.append(_Series(dict(s.labels), s.values, s.present & keep))
    return _dedupe(out)


def _signature(
    modifier: pp.BinModifier | None,
) -> Callable[[dict[str, str]], tuple[tuple[str, str], ...]]:
    matching = modifier.matching if modifier is not None else None
    if matching is not None and matching.type == pp.LabelModifierType.Include:
        names = sorted(set(matching.labels))
        return lambda labels: tuple((n, labels.get(n, "")) for n in names)
    ignored = set(matching.labels) if matching is not None else set()
    ignored.add(_NAME)
    return lambda labels: tuple(sorted((k, v) for k, v in labels.items() if k not in ignored))


def _match_vectors(
    op: str,
    lhs: list[_Series],
    rhs: list[_Series],
    modifier: pp.BinModifier | None,
    return_bool: bool,
) -> list[_Series]:
    card = modifier.card if modifier is not None else pp.VectorMatchCardinality.OneToOne
    if card == pp.VectorMatchCardinality.ManyToMany:
        raise QueryError(f"many-to-many matching is only for and/or/unless, not {op!r}")
    signature = _signature(modifier)
    matching = modifier.matching if modifier is not None else None
    on = matching is not None and matching.type == pp.LabelModifierType.Include
    matched_names = set(matching.labels) if matching is not None else set()
    include = list(modifier.group_labels or []) if modifier is not None else []
    swapped = card == pp.VectorMatchCardinality.OneToMany
    many, one = (rhs, lhs) if swapped else (lhs, rhs)
    one_groups = _groups(one, signature)
    for sig, members in one_groups.items():
        if _overlap(members):
            side = "left" if swapped else "right"
            raise QueryError(
                f"found duplicate series for the match group {_show(sig)} on the {side} "
                "hand-side of the operation; many-to-many matching not allowed: matching "
                "labels must be unique on one side"
            )
    if card == pp.VectorMatchCardinality.OneToOne:
        for sig, members in _groups(many, signature).items():
            if _overlap(members):
                raise QueryError(
                    f"multiple matches for labels {_show(sig)}: many-to-one matching must be "
                    "explicit (group_left/group_right)"
                )
    out = []
    with np.errstate(all="ignore"):
        for m in many:
            for o in one_groups.get(signature(m.labels), []):
                both = m.present & o.present
                if not both.any():
                    continue
                left, right = (o.values, m.values) if swapped else (m.values, o.values)
                if op in _ARITHMETIC:
                    values, present = _ARITHMETIC[op](left, right), both
                else:
                    keep = _COMPARISON[op](left, right)
                    if return_bool:
                        values, present = keep.astype(np.float64), both
                    else:
                        values, present = left, both & keep
                if not present.any():
                    continue
                labels = dict(m.labels)
                if op in _ARITHMETIC or return_bool:
                    labels.pop(_NAME, None)
                if card == pp.VectorMatchCardinality.OneToOne:
                    if on:
                        labels = {k: v for k, v in labels.items() if k in matched_names}
                    else:
                        labels = {k: v for k, v in labels.items() if k not in matched_names}
                for name in include:
                    if o.labels.get(name, ""):
                        labels[name] = o.labels[name]
                    else:
                        labels.pop(name, None)
                out.append(_Series(labels, values, present))
    return _dedupe(out, "multiple matches for labels: grouping labels must ensure unique matches")


def _set_operation(
    op: str, lhs: list[_Series], rhs: list[_Series], modifier: pp.BinModifier | None
) -> list[_Series]:
    signature = _signature(modifier)
    if op == "or":
        taken: dict[tuple[tuple[str, str], ...], Bools] = {}
        for s in lhs:
            sig = signature(s.labels)
            taken[sig] = taken[sig] | s.present if sig in taken else s.present.copy()
        out = list(lhs)
        for s in rhs:
            blocked = taken.get(signature(s.labels))
            present = s.present if blocked is None else s.present & ~blocked
            if present.any():
                out.append(_Series(s.labels, s.values, present, s.times))
        return _dedupe(out)
    other: dict[tuple[tuple[str, str], ...], Bools] = {}
    for s in rhs:
        sig = signature(s.labels)
        other[sig] = other[sig] | s.present if sig in other else s.present.copy()
    out = []
    for s in lhs:
        matched = other.get(signature(s.labels))
        if op == "and":
            if matched is None:
                continue
            present = s.present & matched
        else:
            present = s.present & ~matched if matched is not None else s.present
        if present.any():
            out.append(_Series(s.labels, s.values, present, s.times))
    return out


# -- small helpers ---------------------------------------------------------------------


def _parse(expr: str) -> pp.Expr:
    try:
        return pp.parse(expr)
    except ValueError as exc:
        text = str(exc).strip().splitlines()
        raise QueryError(f"cannot parse {expr!r}: {text[0] if text else 'syntax error'}") from exc


_MATCH_OPS: tuple[tuple[pp.MatchOp, MatchOp], ...] = (
    (pp.MatchOp.Equal, "="),
    (pp.MatchOp.NotEqual, "!="),
    (pp.MatchOp.Re, "=~"),
    (pp.MatchOp.NotRe, "!~"),
)


def _matchers(node: pp.VectorSelector) -> tuple[str | None, list[Matcher]]:
    if node.matchers.or_matchers:
        raise QueryError(f"'or' between matchers is not supported: {node}")
    out = []
    for m in node.matchers.matchers:
        op = next((ours for theirs, ours in _MATCH_OPS if m.op == theirs), None)
        if op is None:
            raise QueryError(f"unsupported matcher {m}")
        try:
            out.append(Matcher(m.name, op, m.value))
        except ValueError as exc:
            raise QueryError(f"{node}: {exc}") from exc
    return node.name, out


def _ms(seconds: Floats) -> Ints:
    return np.round(seconds * 1000.0).astype(np.int64)


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _show(sig: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sig) + "}"


def _drop_name(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != _NAME}


def _kind(value: _Value) -> str:
    if isinstance(value, _Scalar):
        return "a scalar"
    if isinstance(value, _Range):
        return "a range vector"
    if isinstance(value, _String):
        return "a string"
    return "an instant vector"


def _vector(value: _Value, what: str) -> list[_Series]:
    if isinstance(value, list):
        return value
    if isinstance(value, _Range):
        raise QueryError(
            f"{what}: got a range vector ({value.node}); wrap it in a function such as rate()"
        )
    raise QueryError(f"{what}: expected an instant vector, got {_kind(value)}")


def _groups(
    series: list[_Series], signature: Callable[[dict[str, str]], tuple[tuple[str, str], ...]]
) -> dict[tuple[tuple[str, str], ...], list[_Series]]:
    groups: dict[tuple[tuple[str, str], ...], list[_Series]] = {}
    for s in series:
        groups.setdefault(signature(s.labels), []).append(s)
    return groups


def _overlap(members: list[_Series]) -> bool:
    if len(members) < 2:
        return False
    total = np.sum([m.present for m in members], axis=0)
    return bool((total > 1).any())


def _dedupe(series: list[_Series], message: str = _SAME_LABELSET) -> list[_Series]:
    """Merge series that ended up with the same labels at different steps; the same labels
    at the same step is Prometheus's error."""
    groups: dict[tuple[tuple[str, str], ...], list[_Series]] = {}
    for s in series:
        groups.setdefault(_key(s.labels), []).append(s)
    if all(len(members) == 1 for members in groups.values()):
        return series
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(members[0])
            continue
        if _overlap(members):
            raise QueryError(f"{message}: {_show(_key(members[0].labels))}")
        values = members[0].values.copy()
        present = members[0].present.copy()
        for s in members[1:]:
            values = np.where(s.present, s.values, values)
            present |= s.present
        out.append(_Series(members[0].labels, values, present))
    return out


def _reduce_windows(ufunc: np.ufunc, values: Floats, lo: Ints, hi: Ints) -> Floats:
    """``ufunc`` over ``values[lo[i]:hi[i]]`` for every i (garbage where lo >= hi), in C."""
    padded = np.append(values, 0.0)
    index = np.empty(2 * len(lo), np.int64)
    index[0::2] = lo
    index[1::2] = hi
    with np.errstate(all="ignore"):
        reduced: Floats = ufunc.reduceat(padded, index)[0::2]
    return reduced


def _divide(a: Floats, b: Floats) -> Floats:
    with np.errstate(all="ignore"):
        result: Floats = np.divide(a, b)
    return result


def _ieee_div(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _quantile(q: float, values: list[float]) -> float:
    """Prometheus's quantile: linear between the two nearest ranks; NaN sorts first."""
    if not values or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(values, key=lambda v: (not math.isnan(v), v if not math.isnan(v) else 0.0))
    n = len(ordered)
    rank = q * (n - 1)
    lower = max(0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return _mul(ordered[lower], 1 - weight) + _mul(ordered[upper], weight)


def _mul(a: float, b: float) -> float:
    if math.isinf(a) and b == 0:
        return math.nan  # IEEE, as Go computes it
    return a * b


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile over (upper bound, cumulative count) pairs."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets, key=lambda b: b[0])
    if buckets[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []
    for bound, count in buckets:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    # Float noise in the counts (relative 1e-12) is flattened before monotonicity is forced.
    previous = merged[0][1]
    for bucket in merged[1:]:
        delta = abs(bucket[1] - previous)
        if delta == 0:
            continue
        if _ieee_div(delta, bucket[1]) <= 1e-12:
            bucket[1] = previous
        else:
            previous = bucket[1]
    highest = merged[0][1]
    for bucket in merged[1:]:
        if bucket[1] > highest:
            highest = bucket[1]
        elif bucket[1] < highest:
            bucket[1] = highest
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * _ieee_div(rank, count)


def _bucket_quantiles(phi: Floats, bounds: Floats, counts: Floats) -> Floats:
    """``_bucket_quantile`` for many steps at once: ``bounds`` ascending and distinct,
    ``counts`` one row per bucket, one column per step."""
    steps = counts.shape[1]
    if bounds[-1] != math.inf or len(bounds) < 2:
        return _phi_bounds(phi, np.full(steps, math.nan))
    counts = counts.copy()
    with np.errstate(all="ignore"):
        previous = counts[0].copy()
        for i in range(1, len(bounds)):  # float noise flattened, as in the scalar version
            delta = np.abs(counts[i] - previous)
            noise = (delta != 0) & (delta / counts[i] <= 1e-12)
            counts[i] = np.where(noise, previous, counts[i])
            previous = counts[i]
        counts = np.maximum.accumulate(counts, axis=0)
        observations = counts[-1]
        rank = phi * observations
        reached = counts[:-1] >= rank
        b = np.where(reached.any(axis=0), reached.argmax(axis=0), len(bounds) - 1)
        below = np.maximum(b - 1, 0)
        columns = np.arange(steps)
        start = np.where(b > 0, bounds[below], 0.0)
        before = np.where(b > 0, counts[below, columns], 0.0)
        inside = counts[np.minimum(b, len(bounds) - 1), columns] - before
        result = start + (bounds[b] - start) * ((rank - before) / inside)
        result = np.where((b == 0) & (bounds[0] <= 0), bounds[0], result)
        result = np.where(b == len(bounds) - 1, bounds[-2], result)
        result = np.where(observations == 0, math.nan, result)
    return _phi_bounds(phi, result)


def _phi_bounds(phi: Floats, result: Floats) -> Floats:
    """What every quantile is outside [0, 1], whatever the buckets: -Inf, +Inf, NaN."""
    result = np.where(phi < 0, -math.inf, np.where(phi > 1, math.inf, result))
    out: Floats = np.where(np.isnan(phi), math.nan, result)
    return out


def _order(tree: pp.Expr, points: list[Point]) -> list[Point]:
    """Instant results sorted by labels; topk/bottomk keep Prometheus's value order."""
    inner = tree
    while isinstance(inner, pp.ParenExpr):
        inner = inner.expr
    if isinstance(inner, pp.AggregateExpr) and str(inner.op) in ("topk", "bottomk"):
        descending = str(inner.op) == "topk"
        return sorted(
            points,
            key=lambda p: (math.isnan(p.value), -p.value if descending else p.value),
        )
    return sorted(points, key=lambda p: sorted(p.labels.items()))
