"""What the gateways saw of each version of a service: counts, success rate, latency.

Every site gateway exposes cumulative counters on its admin ``/metrics``, which the
observe loop scrapes into the metrics store. A release keeps one reading per gateway as
its baseline (:func:`gateway_sample` of the gateway's newest samples, a
:class:`GatewaySample`, persisted with :meth:`GatewaySample.to_json` so a restarted
controller carries on), reads again later and takes the :func:`delta`: the
:class:`Totals` of what happened in between, summed over gateways and sites.
:meth:`Totals.figures` gives the :class:`VersionFigures` of one version, from which
analysis reads the success rate and the p99.

A gateway restarts with its counters at zero. When any series of a gateway went down
between the two scrapes, the whole gateway is taken as restarted and its new values count
whole: what it served before the restart but after the baseline is lost, never negative.

Everything here is pure: scraping and reading the store are the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from alwayson.metrics.model import Sample

REQUESTS = "alwayson_gateway_requests_total"
DURATION = "alwayson_gateway_request_duration_seconds"
LOCAL_RESPONSES = "alwayson_gateway_local_responses_total"

SeriesKey = tuple[str, str]
"""(service, version). Version ``""`` holds the requests of a service that got no backend."""

LocalKey = tuple[str, str]
"""(service, exact status code such as ``"502"``) of the answers a gateway made itself."""


def _bound_text(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def _count_at(buckets: Mapping[float, int], bound: float) -> int:
    """The cumulative count at ``bound``, from the largest upper bound not above it."""
    if bound in buckets:
        return buckets[bound]
    below = [b for b in buckets if b <= bound]
    return buckets[max(below)] if below else 0


@dataclass(frozen=True)
class VersionFigures:
    """The requests of one version of one service, over some window.

    ``by_class`` counts answers by status class (``"2xx"``…); ``buckets`` are cumulative
    histogram counts of the request duration by upper bound in seconds, ``math.inf``
    last; ``duration_sum`` is the total duration in seconds.
    """

    by_class: Mapping[str, int] = field(default_factory=dict)
    buckets: Mapping[float, int] = field(default_factory=dict)
    duration_sum: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.by_class.values())

    @property
    def errors(self) -> int:
        """Answers with a 5xx status: the failures. A 4xx is the client's fault."""
        return self.by_class.get("5xx", 0)

    @property
    def success_rate(self) -> float | None:
        """The share of requests that did not fail (not 5xx); None without requests."""
        requests = self.requests
        return (requests - self.errors) / requests if requests else None

    @property
    def error_rate(self) -> float | None:
        requests = self.requests
        return self.errors / requests if requests else None

    @property
    def observed(self) -> int:
        """Requests in the duration histogram (its ``+Inf`` bucket)."""
        return _count_at(self.buckets, math.inf)

    @property
    def p99(self) -> float | None:
        return self.quantile(0.99)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the duration (seconds), as PromQL's ``histogram_quantile``.

        Linear interpolation inside the bucket holding the rank; a rank in the ``+Inf``
        bucket answers the largest finite upper bound. None when nothing was observed.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a quantile is between 0 and 1, not {q}")
        bounds = sorted(self.buckets)
        if len(bounds) < 2 or not math.isinf(bounds[-1]):
            return None
        counts: list[int] = []
        for bound in bounds:  # a delta of racing scrapes may dip: keep it monotonic
            counts.append(max(self.buckets[bound], counts[-1] if counts else 0))
        total = counts[-1]
        if total <= 0:
            return None
        rank = q * total
        index = next(i for i, count in enumerate(counts) if count >= rank)
        if index == len(bounds) - 1:
            return bounds[-2]
        upper = bounds[index]
        if index == 0:
            lower, below = 0.0, 0
            if upper <= 0:
                return upper
        else:
            lower, below = bounds[index - 1], counts[index - 1]
        in_bucket = counts[index] - below
        if in_bucket <= 0:  # q = 0 before any observation: the bucket's start
            return lower
        return lower + (upper - lower) * ((rank - below) / in_bucket)

    def plus(self, other: VersionFigures) -> VersionFigures:
        by_class = dict(self.by_class)
        for name, count in other.by_class.items():
            by_class[name] = by_class.get(name, 0) + count
        bounds = set(self.buckets) | set(other.buckets)
        buckets = {b: _count_at(self.buckets, b) + _count_at(other.buckets, b) for b in bounds}
        return VersionFigures(
            by_class, dict(sorted(buckets.items())), self.duration_sum + other.duration_sum
        )

    def minus(self, base: VersionFigures) -> VersionFigures:
        """What was added since ``base``; assumes no counter went down."""
        by_class = {
            name: count - base.by_class.get(name, 0) for name, count in self.by_class.items()
        }
        buckets = {b: count - _count_at(base.buckets, b) for b, count in self.buckets.items()}
        return VersionFigures(
            {name: count for name, count in by_class.items() if count},
            buckets,
            self.duration_sum - base.duration_sum,
        )

    def went_down_from(self, base: VersionFigures) -> bool:
        """Whether any counter is lower than in ``base`` (the process restarted)."""
        if any(self.by_class.get(name, 0) < count for name, count in base.by_class.items()):
            return True
        if any(_count_at(self.buckets, b) < count for b, count in base.buckets.items()):
            return True
        return self.duration_sum < base.duration_sum

    def to_json(self) -> dict[str, Any]:
        return {
            "by_class": dict(sorted(self.by_class.items())),
            "buckets": {_bound_text(b): count for b, count in sorted(self.buckets.items())},
            "duration_sum": self.duration_sum,
        }

    @classmethod
    def from_json(cls, data: Any) -> VersionFigures:
        _expect(isinstance(data, dict), "figures must be an object", data)
        by_class = data.get("by_class", {})
        buckets = data.get("buckets", {})
        _expect(isinstance(by_class, dict), "by_class must be an object", by_class)
        _expect(isinstance(buckets, dict), "buckets must be an object", buckets)
        return cls(
            {str(name): _int(count) for name, count in by_class.items()},
            {_bound(bound): _int(count) for bound, count in buckets.items()},
            _float(data.get("duration_sum", 0.0)),
        )


@dataclass(frozen=True)
class _Counts:
    """Request figures by (service, version) and local answers by (service, code)."""

    series: Mapping[SeriesKey, VersionFigures] = field(default_factory=dict)
    local_responses: Mapping[LocalKey, int] = field(default_factory=dict)

    def only(self, service: str) -> Self:
        """The counts of one service, e.g. to keep a release's baseline small."""
        return type(self)(
            {key: f for key, f in self.series.items() if key[0] == service},
            {key: n for key, n in self.local_responses.items() if key[0] == service},
        )

    def to_json(self) -> dict[str, Any]:
        """Plain lists and dicts of strings and numbers, for the state store."""
        return {
            "series": [
                {"service": service, "version": version, **figures.to_json()}
                for (service, version), figures in sorted(self.series.items())
            ],
            "local_responses": [
                {"service": service, "code": code, "count": count}
                for (service, code), count in sorted(self.local_responses.items())
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The inverse of :meth:`to_json`; ValueError on anything else."""
        _expect(isinstance(data, dict), "counts must be an object", data)
        series: dict[SeriesKey, VersionFigures] = {}
        for item in _list(data.get("series", [])):
            _expect(isinstance(item, dict), "a series must be an object", item)
            key = (_text(item, "service"), _text(item, "version"))
            series[key] = VersionFigures.from_json(item)
        local: dict[LocalKey, int] = {}
        for item in _list(data.get("local_responses", [])):
            _expect(isinstance(item, dict), "a local response count must be an object", item)
            local[(_text(item, "service"), _text(item, "code"))] = _int(item.get("count"))
        return cls(series, local)


@dataclass(frozen=True)
class GatewaySample(_Counts):
    """The counters of one scrape of one gateway, summed over backend sites.

    They count from the gateway's start; only a :func:`delta` of two samples means
    anything.
    """


@dataclass(frozen=True)
class Totals(_Counts):
    """What all gateways saw between two scrapes (see :func:`delta`)."""

    def figures(self, service: str, version: str) -> VersionFigures:
        """The figures of one version; zeros when the gateways saw none of it."""
        return self.series.get((service, version), VersionFigures())

    def versions(self, service: str) -> dict[str, VersionFigures]:
        """Every version of ``service`` seen, ``""`` for requests that got no backend."""
        return {version: f for (name, version), f in sorted(self.series.items()) if name == service}

    def dropped(self, service: str) -> int:
        """Requests of ``service`` the gateways answered themselves (no backend, 502, 504…)."""
        return sum(count for (name, _), count in self.local_responses.items() if name == service)


Window = dict[str, GatewaySample]
"""One sample per gateway id: a baseline, or the scrape that ends a window."""


def gateway_sample(samples: Iterable[Sample]) -> GatewaySample:
    """The release counters among one gateway's samples (sample names as exposed, e.g.
    ``alwayson_gateway_requests_total``); every other sample is ignored."""
    by_class: dict[SeriesKey, dict[str, int]] = {}
    buckets: dict[SeriesKey, dict[float, int]] = {}
    sums: dict[SeriesKey, float] = {}
    local: dict[LocalKey, int] = {}
    for sample in samples:
        labels = sample.labels
        key = (labels.get("service", ""), labels.get("version", ""))
        if sample.name == REQUESTS:
            counts = by_class.setdefault(key, {})
            code = labels.get("code", "")
            counts[code] = counts.get(code, 0) + round(sample.value)
        elif sample.name == DURATION + "_bucket":
            counts_by_bound = buckets.setdefault(key, {})
            bound = float(labels["le"])
            counts_by_bound[bound] = counts_by_bound.get(bound, 0) + round(sample.value)
        elif sample.name == DURATION + "_sum":
            sums[key] = sums.get(key, 0.0) + sample.value
        elif sample.name == LOCAL_RESPONSES:
            local_key = (labels.get("service", ""), labels.get("code", ""))
            local[local_key] = local.get(local_key, 0) + round(sample.value)
    keys = set(by_class) | set(buckets) | set(sums)
    series = {
        key: VersionFigures(
            by_class.get(key, {}),
            dict(sorted(buckets.get(key, {}).items())),
            sums.get(key, 0.0),
        )
        for key in sorted(keys)
    }
    return GatewaySample(series, local)


def _restarted(base: GatewaySample, now: GatewaySample) -> bool:
    for key, before in base.series.items():
        if now.series.get(key, VersionFigures()).went_down_from(before):
            return True
    return any(
        now.local_responses.get(key, 0) < count for key, count in base.local_responses.items()
    )


def _since(base: GatewaySample | None, now: GatewaySample) -> GatewaySample:
    """What one gateway added since ``base``: all of ``now`` when new or restarted."""
    if base is None or _restarted(base, now):
        return now
    series = {
        key: figures.minus(base.series.get(key, VersionFigures()))
        for key, figures in now.series.items()
    }
    local = {
        key: count - base.local_responses.get(key, 0) for key, count in now.local_responses.items()
    }
    return GatewaySample(series, local)


def _sum(samples: Iterable[GatewaySample]) -> Totals:
    series: dict[SeriesKey, VersionFigures] = {}
    local: dict[LocalKey, int] = {}
    for sample in samples:
        for key, figures in sample.series.items():
            series[key] = series[key].plus(figures) if key in series else figures
        for local_key, count in sample.local_responses.items():
            local[local_key] = local.get(local_key, 0) + count
    return Totals(
        {key: f for key, f in sorted(series.items()) if f.requests or f.observed},
        {key: count for key, count in sorted(local.items()) if count},
    )


def delta(base: Mapping[str, GatewaySample], now: Mapping[str, GatewaySample]) -> Totals:
    """What every gateway in ``now`` saw since its sample in ``base``, summed.

    A gateway missing from ``base`` (new since) counts whole, as does one that restarted
    (any of its counters went down). A gateway missing from ``now`` (unreachable) counts
    nothing: the caller decides whether a window with a gateway missing can be judged.
    """
    return _sum(_since(base.get(gateway), sample) for gateway, sample in sorted(now.items()))


def _expect(condition: bool, message: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{message}, not {value!r}")


def _text(item: dict[str, Any], name: str) -> str:
    value = item.get(name)
    _expect(isinstance(value, str), f"{name} must be a string", value)
    return str(value)


def _bound(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"a bucket bound is a number or +Inf, not {text!r}") from None


def _list(value: Any) -> list[Any]:
    _expect(isinstance(value, list), "expected a list", value)
    return list(value)


def _int(value: Any) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool), "expected a count", value)
    return int(value)


def _float(value: Any) -> float:
    _expect(
        isinstance(value, int | float) and not isinstance(value, bool), "expected a number", value
    )
    return float(value)
