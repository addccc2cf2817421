"""Gateway metrics: plain integers on the hot path, Prometheus text on demand.

A request costs three list increments on a :class:`RequestStats` the route table already
points at; the Prometheus families are built only when ``/metrics`` is scraped, by a
custom collector rendered with prometheus_client's exposition.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Upper bounds (seconds) of the request duration histogram.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class RequestStats:
    """Counts of the requests of one (service, version, site)."""

    __slots__ = ("by_class", "duration_buckets", "duration_sum", "service", "site", "version")

    def __init__(self, service: str, version: str, site: str) -> None:
        self.service = service
        self.version = version
        self.site = site
        # Indexed by status // 100: every status is three digits (llhttp reads no more),
        # so no bounds check; classes 6xx to 9xx are counted but not exported.
        self.by_class = [0] * 10
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        self.by_class[status // 100] += 1
        self.duration_buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds

    @property
    def count(self) -> int:
        return sum(self.duration_buckets)


class GatewayMetrics:
    """Every counter of one gateway process; they survive route table swaps."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str, str], RequestStats] = {}
        self.retries: dict[str, int] = {}
        self.connect_errors: dict[tuple[str, str], int] = {}
        self.ejections: dict[tuple[str, str], int] = {}
        # Answers the gateway wrote itself with a 5xx status, by (service, status).
        self.local_responses: dict[tuple[str, int], int] = {}
        self.rejected_connections = 0  # closed at once: over --max-connections
        self.generation = 0
        self.active_connections: Callable[[], int] = lambda: 0
        self.active_tunnels: Callable[[], int] = lambda: 0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_GatewayCollector(self))

    def stats_for(self, service: str, version: str, site: str) -> RequestStats:
        key = (service, version, site)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = RequestStats(service, version, site)
        return stats

    def all_stats(self) -> list[RequestStats]:
        return list(self._stats.values())

    def count_retry(self, service: str) -> None:
        self.retries[service] = self.retries.get(service, 0) + 1

    def count_connect_error(self, service: str, backend: str) -> None:
        key = (service, backend)
        self.connect_errors[key] = self.connect_errors.get(key, 0) + 1

    def count_ejection(self, service: str, backend: str) -> None:
        key = (service, backend)
        self.ejections[key] = self.ejections.get(key, 0) + 1

    def count_local_response(self, service: str, status: int) -> None:
        key = (service, status)
        self.local_responses[key] = self.local_responses.get(key, 0) + 1

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self._registry)


class _GatewayCollector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        requests = CounterMetricFamily(
            "alwayson_gateway_requests",
            "Requests answered, by service, backend version, backend site and status class.",
            labels=["service", "version", "site", "code"],
        )
        durations = HistogramMetricFamily(
            "alwayson_gateway_request_duration_seconds",
            "Time from the request head to the end of the response.",
            labels=["service", "version", "site"],
        )
        for stats in metrics.all_stats():
            if not stats.count:
                continue
            labels = [stats.service, stats.version, stats.site]
            for index, name in enumerate(_CLASSES, start=1):
                if stats.by_class[index]:
                    requests.add_metric([*labels, name], stats.by_class[index])
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(DURATION_BUCKETS, stats.duration_buckets, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            cumulative += stats.duration_buckets[-1]
            buckets.append(("+Inf", cumulative))
            durations.add_metric(labels, buckets, sum_value=stats.duration_sum)
        yield requests
        yield durations

        retries = CounterMetricFamily(
            "alwayson_gateway_retries",
            "Requests tried again on another backend or connection.",
            labels=["service"],
        )
        for service, count in sorted(metrics.retries.items()):
            retries.add_metric([service], count)
        yield retries

        connect_errors = CounterMetricFamily(
            "alwayson_gateway_upstream_connect_errors",
            "Failed connects to a backend.",
            labels=["service", "backend"],
        )
        for (service, backend), count in sorted(metrics.connect_errors.items()):
            connect_errors.add_metric([service, backend], count)
        yield connect_errors

        ejections = CounterMetricFamily(
            "alwayson_gateway_backend_ejections",
            "Times a backend was left out of rotation after consecutive failures.",
            labels=["service", "backend"],
        )
        for (service, backend), count in sorted(metrics.ejections.items()):
            ejections.add_metric([service, backend], count)
        yield ejections

        local_responses = CounterMetricFamily(
            "alwayson_gateway_local_responses",
            "Requests the gateway answered itself with a 5xx status (no usable backend, "
            "connect failed, timeout, broken backend answer, unsupported request).",
            labels=["service", "code"],
        )
        for (service, status), count in sorted(metrics.local_responses.items()):
            local_responses.add_metric([service, str(status)], count)
        yield local_responses

        yield CounterMetricFamily(
            "alwayson_gateway_rejected_connections",
            "Client connections closed at once because the gateway had --max-connections.",
            value=metrics.rejected_connections,
        )
        yield GaugeMetricFamily(
            "alwayson_gateway_active_tunnels",
            "Upgraded (WebSocket) connections relayed now.",
            value=metrics.active_tunnels(),
        )
        yield GaugeMetricFamily(
            "alwayson_gateway_active_connections",
            "Client connections open now.",
            value=metrics.active_connections(),
        )
        yield GaugeMetricFamily(
            "alwayson_gateway_routes_generation",
            "Generation of the route table in use.",
            value=metrics.generation,
        )
