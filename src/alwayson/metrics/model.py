"""The few types every part of observe shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Labels = Mapping[str, str]


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
