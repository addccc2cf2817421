"""Thresholds: ``p99 < 200ms``, ``p99.9 <= 1s``, ``error_rate < 0.1%``, ``rps >= 500``,
``dropped == 0``, parsed into checks and judged against a run's results.

Metrics: latency percentiles ``pN`` (any N from 0 to 100, e.g. ``p50``, ``p99.99``),
``min``, ``mean`` and ``max`` of whole iterations (from their intended start), which take
a duration with a unit (``us``, ``ms``, ``s``, ``m``); ``error_rate`` (failed over finished
iterations) as a percentage (``0.1%``) or a fraction (``0.001``); ``rps`` (requests
finished per second) and ``iterations_per_s``, numbers; ``dropped``, ``failed`` and
``sent``, whole counts. Operators: ``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``.
A latency check on a run where nothing finished fails: there is nothing to vouch for.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from alwayson.loadgen.results import RunResult
from alwayson.util.errors import PermanentError

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_EXPRESSION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|==|!=|<|>|=)\s*(.*?)\s*")
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")
_LATENCY_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY_VALUE = re.compile(r"(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_COUNTS = ("dropped", "failed", "sent")
_RATES = ("rps", "iterations_per_s")
_NAMED_LATENCIES = ("min", "mean", "max")
METRICS_HELP = (
    "pN (p50, p99, p99.9, …), min, mean, max, error_rate, rps, iterations_per_s, "
    "dropped, failed, sent"
)


class ThresholdError(PermanentError):
    """A threshold that cannot be parsed; the message says what is wrong and how to write it."""


@dataclass(frozen=True)
class Check:
    """``metric op limit``; latency limits in milliseconds, error rates as fractions."""

    expression: str
    metric: str
    op: str
    limit: float

    @property
    def unit(self) -> str:
        if _is_latency(self.metric):
            return "ms"
        return "" if self.metric != "error_rate" else "fraction"


@dataclass(frozen=True)
class Outcome:
    check: Check
    actual: float | None  # None: the run has no value for it (nothing finished)
    passed: bool

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return f"{verdict}: {self.check.expression} (actual: {_show(self.check, self.actual)})"


def parse_threshold(text: str) -> Check:
    match = _EXPRESSION.fullmatch(text)
    if not match:
        raise ThresholdError(
            f"threshold {text!r}: write it as METRIC OPERATOR VALUE, e.g. 'p99 < 200ms' "
            f"or 'error_rate < 0.1%'"
        )
    metric, op, value = match.group(1), match.group(2), match.group(3)
    if op == "=":
        raise ThresholdError(f"threshold {text!r}: '=' is not an operator; use '=='")
    if not value:
        raise ThresholdError(f"threshold {text!r}: the value after {op!r} is missing")
    return Check(text.strip(), metric, op, _parse_limit(text, metric, value))


def parse_thresholds(texts: Iterable[str]) -> list[Check]:
    return [parse_threshold(t) for t in texts]


def _is_latency(metric: str) -> bool:
    return metric in _NAMED_LATENCIES or _PERCENTILE.fullmatch(metric) is not None


def _parse_limit(text: str, metric: str, value: str) -> float:
    if _is_latency(metric):
        pct = _PERCENTILE.fullmatch(metric)
        if pct and float(pct.group(1)) > 100:
            raise ThresholdError(f"threshold {text!r}: a percentile is at most p100, not {metric}")
        found = _LATENCY_VALUE.fullmatch(value)
        if not found:
            if _NUMBER.fullmatch(value):
                raise ThresholdError(
                    f"threshold {text!r}: a latency limit needs a unit, e.g. '{value}ms' "
                    f"(units: us, ms, s, m)"
                )
            raise ThresholdError(
                f"threshold {text!r}: {value!r} is not a duration; write e.g. '200ms' or '1s'"
            )
        return float(found.group(1)) * _LATENCY_UNITS[found.group(2)]
    if metric == "error_rate":
        percent = value.endswith("%")
        number = value[:-1].strip() if percent else value
        if not _NUMBER.fullmatch(number):
            raise ThresholdError(
                f"threshold {text!r}: {value!r} is not a rate; write e.g. '0.1%' or '0.001'"
            )
        rate = float(number) / 100 if percent else float(number)
        if rate > 1:
            raise ThresholdError(
                f"threshold {text!r}: an error rate is at most 100% (1.0), not {value}"
                + ("" if percent else f"; did you mean '{number}%'?")
            )
        return rate
    if metric in _RATES:
        number = value.removesuffix("/s").strip()
        if not _NUMBER.fullmatch(number):
            raise ThresholdError(
                f"threshold {text!r}: {value!r} is not a rate per second; write e.g. '500'"
            )
        return float(number)
    if metric in _COUNTS:
        if not value.isdigit():
            raise ThresholdError(
                f"threshold {text!r}: {metric} is a count of iterations; {value!r} is not a "
                f"whole number"
            )
        return float(value)
    raise ThresholdError(f"threshold {text!r}: unknown metric {metric!r}; known: {METRICS_HELP}")


def actual_value(check: Check, result: RunResult) -> float | None:
    """The run's value of the check's metric, in the check's unit."""
    metric = check.metric
    if _is_latency(metric):
        hist = result.latency
        if metric == "min":
            micros: float | None = hist.min_us()
        elif metric == "max":
            micros = hist.max_us()
        elif metric == "mean":
            micros = hist.mean_us()
        else:
            micros = hist.percentile_us(float(metric[1:]))
        return None if micros is None else micros / 1000.0
    if metric == "error_rate":
        return result.error_rate if result.finished else None
    if metric == "rps":
        return result.rps
    if metric == "iterations_per_s":
        return result.iterations_per_s
    return float(getattr(result, metric))


def evaluate(checks: Iterable[Check], result: RunResult) -> list[Outcome]:
    outcomes = []
    for check in checks:
        actual = actual_value(check, result)
        passed = actual is not None and _OPERATORS[check.op](actual, check.limit)
        outcomes.append(Outcome(check, actual, passed))
    return outcomes


def all_passed(outcomes: Iterable[Outcome]) -> bool:
    return all(o.passed for o in outcomes)


def _show(check: Check, actual: float | None) -> str:
    if actual is None:
        return "none (nothing finished)"
    if check.unit == "ms":
        return f"{actual:g}ms"
    if check.metric == "error_rate":
        return f"{actual * 100:.4g}%"
    return f"{int(actual)}" if math.isclose(actual, round(actual)) else f"{actual:.3f}"
