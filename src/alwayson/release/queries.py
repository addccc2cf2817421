"""Release checks in a small, exact subset of PromQL, judged over the analysis window.

A check compares one number with a threshold::

    rate(bank_requests_total{code=~"5.."}[1m]) < 0.5
    sum(increase(bank_fraud_decisions_total{decision="block"}[5m])) <= 3
    bank_requests_in_flight > 0

What is supported, and what it means here:

- a selector ``name{label="v", label!="v", label=~"re", label!~"re"}``; the name may be
  left out when a matcher is given (``{__name__=~"bank_.*"}``). Regular expressions are
  anchored at both ends, as in Prometheus; a missing label matches ``""``;
- ``increase(sel[range])``: what the matching series grew by between the two scrapes
  that bound the window (a series that went down, or any counter of the same scrape
  target that went down, restarted: its new value counts whole);
- ``rate(sel[range])``: that increase divided by the seconds between the two scrapes.
  The ``[range]`` is accepted for familiarity and ignored: the window is always the
  analysis window, from the ``before`` scrapes to the ``after`` ones;
- a bare selector: the sum of the current values (the ``after`` scrapes), for gauges;
- ``sum(...)`` around any of these: results are always summed over the matching series
  anyway, so it changes nothing;
- a comparison ``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=`` against a number.

No matching series sums to 0: ``rate(errors_total[1m]) < 0.5`` passes when no error was
ever counted. Parsing and evaluation are pure; the scraping is the caller's.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

Function = Literal["increase", "rate", "value"]
MatchOp = Literal["=", "!=", "=~", "!~"]

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_UNITS["y"] = 365 * _UNITS["d"]
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|Inf|NaN)")
_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_GROUPING = re.compile(r"\s*(?:by|without)\b")
_MATCH_OPS: tuple[MatchOp, ...] = ("=~", "!~", "!=", "=")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
# Sample types whose values only grow (until the process restarts).
_COUNTER_TYPES = {"counter", "histogram", "summary"}


class QueryError(ValueError):
    """A check that does not parse. ``column`` (1-based) is where the parser stopped.

    A ValueError, so a pydantic validator of the spec turns it into a located problem.
    """

    def __init__(self, text: str, column: int, message: str) -> None:
        self.text = text
        self.column = column
        self.reason = message
        super().__init__(f"column {column}: {message}")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: MatchOp
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    name: str | None
    matchers: tuple[Matcher, ...] = ()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.name is not None and name != self.name:
            return False
        named = {**labels, "__name__": name}
        return all(m.matches(named) for m in self.matchers)


@dataclass(frozen=True)
class Check:
    """One parsed check: ``function(selector) comparison threshold``."""

    text: str
    function: Function
    selector: Selector
    comparison: str
    threshold: float
    range_seconds: float | None = None  # the ignored ``[range]``, kept for display

    def holds(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    value: float
    text: str

    def describe(self) -> str:
        """E.g. ``rate(errors_total[1m]) < 0.5: 0.73 (failed)``."""
        return f"{self.text}: {self.value:.4g} ({'ok' if self.ok else 'failed'})"

    def to_json(self) -> dict[str, Any]:
        value = self.value if math.isfinite(self.value) else str(self.value)
        return {"check": self.text, "ok": self.ok, "value": value}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, expected: str, at: int | None = None) -> QueryError:
        at = self.pos if at is None else at
        rest = self.text[at:]
        found = "the end" if not rest else repr(rest[:12] + ("…" if len(rest) > 12 else ""))
        return QueryError(self.text, at + 1, f"expected {expected}, found {found}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def take(self, literal: str) -> bool:
        self.skip()
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: str, what: str | None = None) -> None:
        if not self.take(literal):
            raise self.fail(what or repr(literal))

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip()
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def check(self) -> Check:
        function, selector, range_seconds = self.expression()
        self.skip()
        comparison = next((c for c in COMPARISONS if self.text.startswith(c, self.pos)), None)
        if comparison is None:
            raise self.fail("a comparison (<, <=, >, >=, ==, !=)")
        self.pos += len(comparison)
        number = self.match(_NUMBER)
        if number is None:
            raise self.fail("a number")
        self.skip()
        if self.pos < len(self.text):
            raise self.fail("the end of the check")
        return Check(self.text, function, selector, comparison, float(number), range_seconds)

    def expression(self) -> tuple[Function, Selector, float | None]:
        self.skip()
        start = self.pos
        name = self.match(_NAME)
        if name is not None and self.take("("):
            if name == "sum":
                inner = self.expression()
                self.expect(")")
                return inner
            if name in ("rate", "increase"):
                selector = self.selector()
                range_seconds = self.duration() if self.take("[") else None
                self.expect(")")
                return ("rate" if name == "rate" else "increase"), selector, range_seconds
            raise QueryError(
                self.text, start + 1, f"unsupported function {name}(): use rate, increase or sum"
            )
        if name == "sum" and _GROUPING.match(self.text, self.pos):
            raise QueryError(
                self.text,
                self.pos + 1,
                "grouping with by/without is not supported: results are always summed",
            )
        self.pos = start
        return "value", self.selector(), None

    def selector(self) -> Selector:
        self.skip()
        start = self.pos
        name = self.match(_NAME)
        matchers: list[Matcher] = []
        if self.take("{"):
            while not self.take("}"):
                matchers.append(self.matcher())
                if not self.take(","):
                    self.expect("}", "',' or '}'")
                    break
        if name is None and not matchers:
            raise self.fail("a metric name or a {label matcher}", start)
        return Selector(name, tuple(matchers))

    def matcher(self) -> Matcher:
        label = self.match(_LABEL)
        if label is None:
            raise self.fail("a label name")
        self.skip()
        op: MatchOp | None = None
        for candidate in _MATCH_OPS:
            if self.text.startswith(candidate, self.pos):
                op = candidate
                self.pos += len(candidate)
                break
        if op is None:
            raise self.fail("a label operator (=, !=, =~, !~)")
        self.skip()
        at = self.pos
        value = self.string()
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise QueryError(
                    self.text, at + 1, f"bad regular expression {value!r}: {exc}"
                ) from None
        return Matcher(label, op, value)

    def string(self) -> str:
        quote = self.text[self.pos : self.pos + 1]
        if quote not in ('"', "'"):
            raise self.fail("a quoted string")
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char == "\\" and self.pos < len(self.text):
                escaped = self.text[self.pos]
                self.pos += 1
                # Unknown escapes stay as written: regexes need their backslashes.
                out.append(_ESCAPES.get(escaped, "\\" + escaped))
            else:
                out.append(char)
        raise QueryError(self.text, start + 1, "unterminated string")

    def duration(self) -> float:
        text = self.match(_DURATION)
        if text is None:
            raise self.fail("a duration such as 1m, 30s or 1h30m")
        self.expect("]", "']'")
        return sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def parse_check(text: str) -> Check:
    """Parse one check; :class:`QueryError` (a ValueError) names the column at fault."""
    return _Parser(text).check()


SeriesId = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class _Scrape:
    values: dict[SeriesId, float]
    counters: frozenset[SeriesId]

    def matching(self, selector: Selector) -> Iterator[tuple[SeriesId, float]]:
        for series, value in self.values.items():
            if selector.matches(series[0], dict(series[1])):
                yield series, value


def _scrape(text: str) -> _Scrape:
    values: dict[SeriesId, float] = {}
    counters: set[SeriesId] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            series = (sample.name, frozenset(sample.labels.items()))
            values[series] = values.get(series, 0.0) + sample.value
            if family.type in _COUNTER_TYPES and "quantile" not in sample.labels:
                counters.add(series)
    return _Scrape(values, frozenset(counters))


def _increase(before: _Scrape | None, after: _Scrape, selector: Selector) -> float:
    restarted = before is not None and any(
        after.values.get(series, 0.0) < before.values[series] for series in before.counters
    )
    total = 0.0
    for series, value in after.matching(selector):
        if before is None or restarted:
            total += value
            continue
        previous = before.values.get(series, 0.0)
        total += value - previous if value >= previous else value
    return total


def _pairs(
    before: Sequence[str] | Mapping[str, str], after: Sequence[str] | Mapping[str, str]
) -> list[tuple[str | None, str]]:
    if isinstance(before, str) or isinstance(after, str):
        raise TypeError("before and after are lists (or mappings) of scraped texts")
    if isinstance(after, Mapping):
        if not isinstance(before, Mapping):
            raise TypeError("before and after must both be lists or both be mappings")
        return [(before.get(target), text) for target, text in after.items()]
    if isinstance(before, Mapping):
        raise TypeError("before and after must both be lists or both be mappings")
    return [(before[i] if i < len(before) else None, text) for i, text in enumerate(after)]


def evaluate(
    check: Check | str,
    before: Sequence[str] | Mapping[str, str],
    after: Sequence[str] | Mapping[str, str],
    seconds: float,
) -> CheckResult:
    """Judge ``check`` over a window of ``seconds`` between two rounds of scrapes.

    ``before`` and ``after`` hold the Prometheus text of the same targets at the window's
    start and end: lists paired by position, or mappings paired by target id. A target
    only in ``after`` (started in the window) counts whole; one only in ``before`` (gone)
    counts nothing. Raises ValueError for text that is not Prometheus exposition, and for
    a ``rate`` over a window that is not positive.
    """
    parsed = check if isinstance(check, Check) else parse_check(check)
    pairs = _pairs(before, after)
    if parsed.function == "value":
        value = sum(v for _, text in pairs for _, v in _scrape(text).matching(parsed.selector))
    else:
        value = sum(
            _increase(None if old is None else _scrape(old), _scrape(new), parsed.selector)
            for old, new in pairs
        )
        if parsed.function == "rate":
            if not seconds > 0:
                raise ValueError(f"a rate needs a window of positive seconds, not {seconds}")
            value /= seconds
    return CheckResult(parsed.holds(value), value, parsed.text)
