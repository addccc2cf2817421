"""Prometheus text-format metrics, hand-written (no client library to import at startup)."""

from __future__ import annotations

import time

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

INF = 'le="+Inf"'

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    """A counter with labels, e.g. ``bank_fraud_decisions_total{decision="block"}``."""

    def __init__(self, name: str, help_text: str, base: Labels) -> None:
        self.name = name
        self.help = help_text
        self._base = base
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._base + tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(k)} {v:g}" for k, v in self._values.items()]
        return lines


class Metrics:
    """Request counters and latency histograms of one service instance."""

    def __init__(self, service: str, version: str, site: str, instance: str) -> None:
        self.base: Labels = (("service", service),)
        self.info: Labels = (
            ("service", service),
            ("version", version),
            ("site", site),
            ("instance", instance),
        )
        self.started = time.time()
        self.in_flight = 0
        self._requests: dict[tuple[str, str, int], int] = {}
        self._durations: dict[tuple[str, str], list[float]] = {}
        self._counters: dict[str, Counter] = {}

    def counter(self, name: str, help_text: str) -> Counter:
        if name not in self._counters:
            self._counters[name] = Counter(name, help_text, self.base)
        return self._counters[name]

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        key = (method, route, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        slot = self._durations.get((method, route))
        if slot is None:
            slot = self._durations[(method, route)] = [0.0] * (len(BUCKETS) + 2)
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                slot[index] += 1
                break
        slot[-2] += seconds
        slot[-1] += 1

    def render(self) -> str:
        base = self.base
        out = [
            "# HELP bank_info Build and placement of this instance.",
            "# TYPE bank_info gauge",
            f"bank_info{_labels(self.info)} 1",
            "# HELP bank_start_time_seconds When this instance started (unix time).",
            "# TYPE bank_start_time_seconds gauge",
            f"bank_start_time_seconds{_labels(base)} {self.started:.3f}",
            "# HELP bank_requests_in_flight Requests being handled now.",
            "# TYPE bank_requests_in_flight gauge",
            f"bank_requests_in_flight{_labels(base)} {self.in_flight}",
            "# HELP bank_requests_total HTTP requests handled, by method, route and status code.",
            "# TYPE bank_requests_total counter",
        ]
        for (method, route, code), count in sorted(self._requests.items()):
            labels = (*base, ("method", method), ("route", route), ("code", str(code)))
            out.append(f"bank_requests_total{_labels(labels)} {count}")
        name = "bank_request_duration_seconds"
        out += [
            f"# HELP {name} Time to handle a request, by method and route.",
            f"# TYPE {name} histogram",
        ]
        for (method, route), slot in sorted(self._durations.items()):
            labels = (*base, ("method", method), ("route", route))
            cumulative = 0.0
            for index, bound in enumerate(BUCKETS):
                cumulative += slot[index]
                le = 'le="' + f"{bound:g}" + '"'
                out.append(f"{name}_bucket{_labels(labels, le)} {cumulative:g}")
            out.append(f"{name}_bucket{_labels(labels, INF)} {slot[-1]:g}")
            out.append(f"{name}_sum{_labels(labels)} {slot[-2]:.6f}")
            out.append(f"{name}_count{_labels(labels)} {slot[-1]:g}")
        for counter in self._counters.values():
            out += counter.render()
        return "\n".join(out) + "\n"
