"""The values a PromQL evaluation passes around, the shared constants, and small helpers.

Every value is vectorised over the steps of the query: a :class:`Series` holds one number
per step and a mask of the steps where the series exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import promql_parser as pp

from alwayson.metrics.model import Field, Matcher, MatchOp, SeriesData
from alwayson.util.errors import PermanentError

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

MAX_STEPS = 11_000  # Prometheus's limit of points per series in a range query
NAME = "__name__"
SAME_LABELSET = "vector cannot contain metrics with the same labelset"
ARITHMETIC: dict[str, Callable[[Floats, Floats], Floats]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "%": np.fmod,  # Go's math.Mod: the sign of the dividend
    "^": np.power,
}
COMPARISON: dict[str, Callable[[Floats, Floats], Bools]] = {
    "==": np.equal,
    "!=": np.not_equal,
    ">": np.greater,
    "<": np.less,
    ">=": np.greater_equal,
    "<=": np.less_equal,
}
SET_OPS = ("and", "or", "unless")
AGGREGATIONS = ("sum", "avg", "min", "max", "count", "quantile", "topk", "bottomk")
SIMPLE: dict[str, Callable[[Floats], Floats]] = {"abs": np.abs, "ceil": np.ceil, "floor": np.floor}
OVER_TIME_FIELD: dict[str, Field] = {
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
class Series:
    """One series over the evaluation steps; ``values`` mean nothing where not ``present``.
    ``times``: the sample times (ms) an instant selector picked, for ``timestamp()``."""

    labels: dict[str, str]
    values: Floats
    present: Bools
    times: Ints | None = None


@dataclass
class Scalar:
    values: Floats


@dataclass
class RangeArg:
    """A range selector, read by the function that takes it (which knows the field)."""

    node: pp.MatrixSelector


@dataclass
class String:
    value: str


Value = Scalar | list[Series] | RangeArg | String


@dataclass
class Window:
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


# -- small helpers ---------------------------------------------------------------------


def parse_expr(expr: str) -> pp.Expr:
    try:
        return pp.parse(expr)
    except ValueError as exc:
        text = str(exc).strip().splitlines()
        raise QueryError(f"cannot parse {expr!r}: {text[0] if text else 'syntax error'}") from exc


MATCH_OPS: tuple[tuple[pp.MatchOp, MatchOp], ...] = (
    (pp.MatchOp.Equal, "="),
    (pp.MatchOp.NotEqual, "!="),
    (pp.MatchOp.Re, "=~"),
    (pp.MatchOp.NotRe, "!~"),
)


def selector_matchers(node: pp.VectorSelector) -> tuple[str | None, list[Matcher]]:
    if node.matchers.or_matchers:
        raise QueryError(f"'or' between matchers is not supported: {node}")
    out = []
    for m in node.matchers.matchers:
        op = next((ours for theirs, ours in MATCH_OPS if m.op == theirs), None)
        if op is None:
            raise QueryError(f"unsupported matcher {m}")
        try:
            out.append(Matcher(m.name, op, m.value))
        except ValueError as exc:
            raise QueryError(f"{node}: {exc}") from exc
    return node.name, out


def to_ms(seconds: Floats) -> Ints:
    return np.round(seconds * 1000.0).astype(np.int64)


def labels_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def show_signature(sig: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sig) + "}"


def drop_name(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != NAME}


def kind_of(value: Value) -> str:
    if isinstance(value, Scalar):
        return "a scalar"
    if isinstance(value, RangeArg):
        return "a range vector"
    if isinstance(value, String):
        return "a string"
    return "an instant vector"


def as_vector(value: Value, what: str) -> list[Series]:
    if isinstance(value, list):
        return value
    if isinstance(value, RangeArg):
        raise QueryError(
            f"{what}: got a range vector ({value.node}); wrap it in a function such as rate()"
        )
    raise QueryError(f"{what}: expected an instant vector, got {kind_of(value)}")


def group_by_signature(
    series: list[Series], signature: Callable[[dict[str, str]], tuple[tuple[str, str], ...]]
) -> dict[tuple[tuple[str, str], ...], list[Series]]:
    groups: dict[tuple[tuple[str, str], ...], list[Series]] = {}
    for s in series:
        groups.setdefault(signature(s.labels), []).append(s)
    return groups


def overlap(members: list[Series]) -> bool:
    if len(members) < 2:
        return False
    total = np.sum([m.present for m in members], axis=0)
    return bool((total > 1).any())


def dedupe(series: list[Series], message: str = SAME_LABELSET) -> list[Series]:
    """Merge series that ended up with the same labels at different steps; the same labels
    at the same step is Prometheus's error."""
    groups: dict[tuple[tuple[str, str], ...], list[Series]] = {}
    for s in series:
        groups.setdefault(labels_key(s.labels), []).append(s)
    if all(len(members) == 1 for members in groups.values()):
        return series
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(members[0])
            continue
        if overlap(members):
            raise QueryError(f"{message}: {show_signature(labels_key(members[0].labels))}")
        values = members[0].values.copy()
        present = members[0].present.copy()
        for s in members[1:]:
            values = np.where(s.present, s.values, values)
            present |= s.present
        out.append(Series(members[0].labels, values, present))
    return out


def reduce_windows(ufunc: np.ufunc, values: Floats, lo: Ints, hi: Ints) -> Floats:
    """``ufunc`` over ``values[lo[i]:hi[i]]`` for every i (garbage where lo >= hi), in C."""
    padded = np.append(values, 0.0)
    index = np.empty(2 * len(lo), np.int64)
    index[0::2] = lo
    index[1::2] = hi
    with np.errstate(all="ignore"):
        reduced: Floats = ufunc.reduceat(padded, index)[0::2]
    return reduced


def divide(a: Floats, b: Floats) -> Floats:
    with np.errstate(all="ignore"):
        result: Floats = np.divide(a, b)
    return result
