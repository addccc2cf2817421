"""Where the autoscaler's three metrics come from: PromQL over the platform's own store.

For service ``S`` in site ``X``, averaged over the autoscaler's ``window`` ``W``:

- ``rps``: ``sum(rate(alwayson_gateway_requests_total{service="S",site="X"}[W]))``, what
  the gateways of every site sent to the instances of ``S`` in ``X`` (the gateways'
  ``site`` label is the backend's site). Answers a gateway made without any backend
  carry ``site=""`` and so are not counted: a service that has no instance anywhere is
  not brought back by its load, only by ``min``;
- ``cpu``: ``avg(rate(alwayson_process_cpu_seconds_total{kind="instance",service="S",
  site="X"}[W]) and on (instance) (alwayson_instance_ready == 1))``, cores per ready
  instance, from psutil, leaving out instances that are starting (their start-up burst
  is not load);
- ``p95``: ``histogram_quantile(0.95, sum by (le) (rate(
  alwayson_gateway_request_duration_seconds_bucket{service="S",site="X"}[W])))``.

Each query gives at most one series; :func:`measurement` turns its values into the
number :meth:`alwayson.scaling.hpa.Autoscaler.decide` takes (None: no data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def promql_range(seconds: float) -> str:
    """A PromQL range (integer units only): ``15s``, ``1500ms``; at least ``1ms``."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def autoscale_queries(service: str, site: str, window: float) -> dict[str, str]:
    """The PromQL of each metric of ``service`` in ``site``, averaged over ``window``."""
    where = f"service={_quote(service)},site={_quote(site)}"
    span = promql_range(window)
    return {
        "rps": f"sum(rate(alwayson_gateway_requests_total{{{where}}}[{span}]))",
        "cpu": (
            f'avg(rate(alwayson_process_cpu_seconds_total{{kind="instance",{where}}}[{span}]) '
            "and on (instance) (alwayson_instance_ready == 1))"
        ),
        "p95": (
            "histogram_quantile(0.95, sum by (le) "
            f"(rate(alwayson_gateway_request_duration_seconds_bucket{{{where}}}[{span}])))"
        ),
    }


def measurement(values: Sequence[float]) -> float | None:
    """The value of a one-series result (the values of its points, one per series); None
    when empty, not a finite number, or (which the queries above never give) more than one
    series. Takes plain numbers: scaling may not import observe (a sibling layer)."""
    if len(values) != 1 or not math.isfinite(values[0]):
        return None
    return values[0]
