"""The few types every part of metrics shares: samples, query results, label matchers,
the series a store returns, and Prometheus's staleness marker."""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Labels = Mapping[str, str]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Field = Literal["last", "min", "max", "sum", "count"]
MatchOp = Literal["=", "!=", "=~", "!~"]

STALE_BITS = 0x7FF0000000000002  # Prometheus's staleness marker (value.StaleNaN)
STALE: float = struct.unpack("<d", struct.pack("<Q", STALE_BITS))[0]
_STALE_BYTES = struct.pack("<d", STALE)


def label_key(labels: Labels) -> tuple[tuple[str, str], ...]:
    """A hashable, order-independent form of a label set (empty values dropped)."""
    return tuple(sorted((k, v) for k, v in labels.items() if v != ""))


@dataclass(frozen=True, slots=True)
class Sample:
    """One scraped value: metric name, labels (without ``__name__``), value."""

    name: str
    labels: Labels
    value: float


@dataclass(frozen=True, slots=True)
class Point:
    """One element of an instant query result. ``labels`` keeps ``__name__`` if the
    expression did not drop it (as Prometheus does)."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Line:
    """One series of a range query result: (time, value) pairs, time ascending."""

    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)


def is_stale(value: float) -> bool:
    """True for the staleness marker (and no other NaN)."""
    return value != value and struct.pack("<d", value) == _STALE_BYTES


def stale_mask(values: Floats) -> npt.NDArray[np.bool_]:
    """Which of ``values`` are staleness markers."""
    marks: npt.NDArray[np.bool_] = values.view(np.uint64) == np.uint64(STALE_BITS)
    return marks


@dataclass(frozen=True, slots=True)
class Matcher:
    """A label matcher as in PromQL: ``=``, ``!=``, ``=~``, ``!~``. Regular expressions are
    anchored at both ends; a missing label matches as ``""``; ``__name__`` is the metric
    name. A bad regular expression raises ValueError."""

    label: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"unknown matcher operator {self.op!r}")
        if self.op in ("=~", "!~"):
            try:
                compiled = re.compile(f"(?s:{self.value})")
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.value!r}: {exc}") from exc
            object.__setattr__(self, "_regex", compiled)

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(value) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True, slots=True)
class SeriesData:
    """The samples of one series in a range, as arrays (times in seconds, ascending)."""

    name: str
    labels: dict[str, str]
    times: Floats
    values: Floats
