"""The query engine: parse with ``promql_parser``, then evaluate the tree over every step at
once. Selectors are read here; functions, aggregations and operators have their own modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import promql_parser as pp

from alwayson.metrics.model import Field, Line, Point, SeriesData, stale_mask
from alwayson.metrics.promql.aggregations import aggregate
from alwayson.metrics.promql.functions import call
from alwayson.metrics.promql.operators import binary, negate
from alwayson.metrics.promql.values import (
    COMPARISON,
    MAX_STEPS,
    NAME,
    Floats,
    Ints,
    QueryError,
    RangeArg,
    Scalar,
    Series,
    Source,
    String,
    Value,
    Window,
    as_vector,
    kind_of,
    parse_expr,
    selector_matchers,
    to_ms,
)


@dataclass(frozen=True)
class Comparison:
    """A comparison's vector operand and the series the comparison kept (see
    :meth:`QueryEngine.compare`)."""

    operand: list[Point]
    kept: list[Point]


class QueryEngine:
    """Instant and range PromQL queries over a ``SeriesStore``."""

    def __init__(self, store: Source, lookback: float = 300.0) -> None:
        self.store = store
        self.lookback = lookback

    def instant(self, expr: str, at: float) -> list[Point] | float:
        """Evaluate ``expr`` at wall time ``at``: a list of points, or a float for a
        scalar expression."""
        tree = parse_expr(expr)
        at_ms = round(at * 1000.0)
        value = self._evaluation(np.array([at_ms], np.int64), at_ms, at_ms).eval(tree)
        if isinstance(value, Scalar):
            return float(value.values[0])
        vector = as_vector(value, "a query")
        points = [Point(dict(s.labels), float(s.values[0])) for s in vector if s.present[0]]
        return order_points(tree, points)

    def compare(self, expr: str, at: float) -> Comparison:
        """A comparison (``... < 0.5``, no ``bool``) at ``at``: its vector operand and the
        series it kept. What a release check reads; an alert rule reads ``kept`` alone."""
        tree = parse_expr(expr)
        inner = tree
        while isinstance(inner, pp.ParenExpr):
            inner = inner.expr
        modifier = inner.modifier if isinstance(inner, pp.BinaryExpr) else None
        if (
            not isinstance(inner, pp.BinaryExpr)
            or str(inner.op) not in COMPARISON
            or (modifier is not None and modifier.return_bool)
        ):
            raise QueryError(f"{expr!r} does not end in a comparison without bool")
        at_ms = round(at * 1000.0)
        evaluation = self._evaluation(np.array([at_ms], np.int64), at_ms, at_ms)
        left = evaluation.eval(inner.lhs)
        side = inner.rhs if isinstance(left, Scalar) else inner.lhs
        operand = evaluation.vec(side, "the operand of a comparison")
        kept = as_vector(evaluation.eval(inner), "a comparison")

        def points(vector: list[Series]) -> list[Point]:
            return [Point(dict(s.labels), float(s.values[0])) for s in vector if s.present[0]]

        return Comparison(order_points(side, points(operand)), order_points(inner, points(kept)))

    def range(self, expr: str, start: float, end: float, step: float) -> list[Line]:
        """Evaluate ``expr`` at ``start``, ``start + step``, … up to ``end``."""
        if step <= 0:
            raise QueryError("step must be more than 0")
        if end < start:
            raise QueryError("end is before start")
        tree = parse_expr(expr)
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
        if isinstance(value, Scalar):
            return [Line({}, list(zip(seconds, value.values.tolist(), strict=True)))]
        lines = []
        for series in as_vector(value, "a query"):
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

    def _evaluation(self, ts: Ints, start_ms: int, end_ms: int) -> Evaluation:
        return Evaluation(self.store, round(self.lookback * 1000.0), ts, start_ms, end_ms)


class Evaluation:
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

    def eval(self, node: pp.Expr) -> Value:
        if isinstance(node, pp.NumberLiteral):
            return Scalar(np.full(self.steps, float(node.val)))
        if isinstance(node, pp.StringLiteral):
            return String(node.val)
        if isinstance(node, pp.ParenExpr):
            return self.eval(node.expr)
        if isinstance(node, pp.UnaryExpr):
            return negate(self, self.eval(node.expr))
        if isinstance(node, pp.VectorSelector):
            return self.select(node)
        if isinstance(node, pp.MatrixSelector):
            return RangeArg(node)
        if isinstance(node, pp.Call):
            return call(self, node)
        if isinstance(node, pp.AggregateExpr):
            return aggregate(self, node)
        if isinstance(node, pp.BinaryExpr):
            return binary(self, node)
        if isinstance(node, pp.SubqueryExpr):
            raise QueryError(f"subqueries are not supported: {node}")
        raise QueryError(f"unsupported expression: {node}")

    # -- selectors ---------------------------------------------------------------------

    def times(self, offset: timedelta | None, at: pp.AtModifier | None) -> Ints:
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

    def fetch(
        self, node: pp.VectorSelector, lo_ms: int, hi_ms: int, field: Field
    ) -> list[SeriesData]:
        name, matchers = selector_matchers(node)
        return self.store.fetch(name, matchers, lo_ms / 1000.0, hi_ms / 1000.0, field=field)

    def select(self, node: pp.VectorSelector) -> list[Series]:
        eff = self.times(node.offset, node.at)
        found = self.fetch(node, int(eff.min()) - self.lookback_ms, int(eff.max()), "last")
        out = []
        for data in found:
            t = to_ms(data.times)
            idx = np.searchsorted(t, eff, side="right") - 1
            pick = np.maximum(idx, 0)
            present = (
                (idx >= 0) & (t[pick] > eff - self.lookback_ms) & ~stale_mask(data.values)[pick]
            )
            if present.any():
                labels = {NAME: data.name, **data.labels}
                out.append(Series(labels, data.values[pick], present, t[pick]))
        return out

    def windows(self, node: pp.MatrixSelector, field: Field) -> list[Window]:
        selector = node.vector_selector
        eff = self.times(selector.offset, selector.at)
        span = round(node.range.total_seconds() * 1000.0)
        found = self.fetch(selector, int(eff.min()) - span, int(eff.max()), field)
        out = []
        for data in found:
            fresh = ~stale_mask(data.values)
            t, v = to_ms(data.times)[fresh], data.values[fresh]
            lo = np.searchsorted(t, eff - span, side="right").astype(np.int64)
            hi = np.searchsorted(t, eff, side="right").astype(np.int64)
            out.append(Window({NAME: data.name, **data.labels}, t, v, lo, hi))
        return out

    def range_arg(self, node: pp.Expr, function: str) -> pp.MatrixSelector:
        if isinstance(node, pp.MatrixSelector):
            return node
        if isinstance(node, pp.SubqueryExpr):
            raise QueryError(f"subqueries are not supported: {function}({node})")
        raise QueryError(f"{function}() needs a range selector such as x[5m], got {node}")

    # -- argument helpers ---------------------------------------------------------------

    def vec(self, node: pp.Expr, what: str) -> list[Series]:
        return as_vector(self.eval(node), what)

    def scalar(self, node: pp.Expr | None, what: str) -> Floats:
        if node is None:
            raise QueryError(f"{what}: a number is missing")
        value = self.eval(node)
        if not isinstance(value, Scalar):
            raise QueryError(f"{what}: expected a scalar, got {kind_of(value)} ({node})")
        return value.values


def order_points(tree: pp.Expr, points: list[Point]) -> list[Point]:
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
