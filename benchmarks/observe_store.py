"""Cost of the embedded time-series store and query engine for the sample bank.

    .venv/bin/python benchmarks/observe_store.py [--hours 24] [--json] [--dir DIR]

Simulates what the controller stores for the sample bank at a 5 s scrape interval, with
wall time fast-forwarded (no sleeping): 60 instances x 40 series (their own /metrics:
request counters by route and code, two latency histograms, gauges; plus ``up``,
``scrape_duration_seconds``, ``scrape_samples_scraped``), two gateways x 330 series
(requests by service, site and code; a latency histogram per service and site) and the
process CPU and memory of 64 processes: 3,188 series. Default retention: raw 6 h, 60 s
rollups for 14 days, so after 24 h, 18 h are rollups.

Prints, for appends (everything the store does: the head log, sealing a block every 30
minutes, rolling up and expiring, and ``compact()`` once a minute as the controller calls
it): CPU seconds per simulated minute and the slowest call; for parsing the
exposition text of one scrape round (62 targets): CPU seconds per minute; memory (RSS
growth of this process, and the store's own estimate of head + index); bytes on disk, per
raw sample and per rollup bucket; the time to reopen (replaying the head log); and the
latency of 24 h range queries at a 60 s step and of instant alert-style queries
(median of 5).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from alwayson.metrics.exposition import parse_exposition  # noqa: E402
from alwayson.metrics.model import Sample  # noqa: E402
from alwayson.metrics.promql import QueryEngine  # noqa: E402
from alwayson.metrics.series import SeriesStore  # noqa: E402
from alwayson.spec.observing import Retention  # noqa: E402

INTERVAL = 5.0
START = 1_800_000_000.0
SERVICES = [
    "accounts", "payments", "transfers", "cards", "loans", "fx", "fraud", "notify",
    "statements", "customers", "auth", "ledger", "rates", "audit", "gateway-api",
]  # fmt: skip
SITES = ["jakarta", "surabaya"]
ROUTES = ["/a", "/b", "/c", "/healthz"]
BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "+Inf"]
GATEWAY_BUCKETS = ["0.01", "0.05", "0.1", "0.5", "1", "+Inf"]


class Series:
    """One simulated series: a counter (grows by ``rate`` x interval, noisy) or a gauge."""

    __slots__ = ("kind", "labels", "name", "rate", "value")

    def __init__(self, name: str, labels: dict[str, str], kind: str, rate: float) -> None:
        self.name, self.labels, self.kind, self.rate = name, labels, kind, rate
        self.value = rate * 1000.0 if kind == "counter" else rate

    def next(self, rng: random.Random) -> float:
        if self.kind == "counter":
            self.value += max(0.0, rng.gauss(self.rate * INTERVAL, self.rate))
            self.value = round(self.value)  # request counts are whole numbers
        elif self.kind == "cpu":
            self.value += rng.uniform(0.0, 0.05)
        elif self.kind == "flag":
            pass
        else:
            self.value = max(0.0, self.value + rng.gauss(0.0, self.rate / 50))
        return self.value


def sample_bank(rng: random.Random) -> list[Series]:
    out: list[Series] = []
    n = 0
    for service in SERVICES:
        for site in SITES:
            for replica in (1, 2):
                n += 1
                target = {
                    "job": "instances",
                    "instance": f"{service}@{site}#{replica}",
                    "service": service,
                    "site": site,
                    "version": "1.0.0",
                }
                rps = rng.uniform(1, 50)
                for route in ROUTES:
                    for code in ("200", "500"):
                        share = 0.99 if code == "200" else 0.01
                        labels = {**target, "route": route, "code": code}
                        out.append(
                            Series("bank_requests_total", labels, "counter", rps * share / 4)
                        )
                for route in ROUTES[:2]:
                    for le in BUCKETS:
                        labels = {**target, "route": route, "le": le}
                        share = min(1.0, 0.2 + BUCKETS.index(le) * 0.12)
                        out.append(
                            Series(
                                "bank_request_duration_seconds_bucket",
                                labels,
                                "counter",
                                rps * share / 4,
                            )
                        )
                    out.append(
                        Series(
                            "bank_request_duration_seconds_sum",
                            {**target, "route": route},
                            "cpu",
                            1,
                        )
                    )
                    out.append(
                        Series(
                            "bank_request_duration_seconds_count",
                            {**target, "route": route},
                            "counter",
                            rps / 4,
                        )
                    )
                for gauge in ("bank_requests_in_flight", "bank_db_pool_in_use", "bank_cache_items"):
                    out.append(Series(gauge, target, "gauge", rng.uniform(1, 100)))
                for op in ("select", "insert", "update"):
                    labels = {**target, "op": op}
                    out.append(Series("bank_db_queries_total", labels, "counter", rps))
                for kind in ("timeout", "refused"):
                    labels = {**target, "kind": kind}
                    out.append(Series("bank_upstream_errors_total", labels, "counter", 0.01))
                out.append(Series("bank_open_fds", target, "gauge", 40))
                out.append(Series("up", target, "flag", 1.0))
                out.append(Series("scrape_duration_seconds", target, "gauge", 0.003))
                out.append(Series("scrape_samples_scraped", target, "flag", 37.0))
    for site in SITES:
        target = {"job": "gateways", "instance": f"gateway@{site}"}
        for service in SERVICES:
            for backend in SITES:
                base = {**target, "service": service, "version": "1.0.0", "site": backend}
                for code in ("2xx", "4xx", "5xx"):
                    out.append(
                        Series(
                            "alwayson_gateway_requests_total", {**base, "code": code}, "counter", 10
                        )
                    )
                for le in GATEWAY_BUCKETS:
                    out.append(
                        Series(
                            "alwayson_gateway_request_duration_seconds_bucket",
                            {**base, "le": le},
                            "counter",
                            10,
                        )
                    )
                out.append(Series("alwayson_gateway_request_duration_seconds_sum", base, "cpu", 1))
                out.append(
                    Series("alwayson_gateway_request_duration_seconds_count", base, "counter", 10)
                )
    for i in range(64):
        kind = "instance" if i < 60 else "gateway"
        labels = {
            "instance": f"p{i}",
            "service": SERVICES[i % 15],
            "site": SITES[i % 2],
            "kind": kind,
        }
        out.append(Series("alwayson_process_cpu_seconds_total", labels, "cpu", 1))
        out.append(Series("alwayson_process_resident_memory_bytes", labels, "gauge", 40e6))
    return out


def exposition(series: list[Series]) -> list[str]:
    """The text of one scrape round: one exposition per instance and gateway."""
    texts: dict[str, list[str]] = {}
    for s in series:
        if s.labels.get("job") is None or s.name in (
            "up",
            "scrape_duration_seconds",
            "scrape_samples_scraped",
        ):
            continue
        own = ",".join(f'{k}="{v}"' for k, v in s.labels.items() if k not in ("job", "instance"))
        texts.setdefault(s.labels["instance"], []).append(f"{s.name}{{{own}}} {s.value}")
    return ["\n".join(lines) + "\n" for lines in texts.values()]


def median_seconds(run: Any, times: int = 5) -> dict[str, float]:
    """Median wall and CPU seconds of ``times`` runs: on a shared machine the CPU time is
    the steadier figure."""
    wall, cpu = [], []
    for _ in range(times):
        began, began_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours of samples")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the store lives (default: a temp dir)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rng = random.Random(7)
    bank = sample_bank(rng)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="alwayson-tsdb-"))
    shutil.rmtree(folder / "tsdb", ignore_errors=True)
    retention = Retention()
    me = psutil.Process()
    gc.collect()
    rss_before = me.memory_info().rss

    # Parsing one scrape round's exposition text (what scraping costs besides HTTP).
    texts = exposition(bank)
    parse_cpu = time.process_time()
    rounds = 24
    for _ in range(rounds):
        for text in texts:
            parse_exposition(
                text,
                {"job": "instances", "instance": "x", "service": "s", "site": "a", "version": "1"},
            )
    parse_per_round = (time.process_time() - parse_cpu) / rounds

    store = SeriesStore(folder / "tsdb", retention)
    scrapes = int(args.hours * 3600 / INTERVAL)
    append_cpu = 0.0
    worst = 0.0
    report_every = max(1, scrapes // 12)
    for i in range(scrapes):
        at = START + i * INTERVAL + rng.uniform(0, 0.05)
        samples = [Sample(s.name, s.labels, s.next(rng)) for s in bank]
        began = time.process_time()
        store.append(samples, at)
        if i % 12 == 0:  # the controller also calls compact() once a minute
            store.compact(at)
        took = time.process_time() - began
        append_cpu += took
        worst = max(worst, took)
        if (i + 1) % report_every == 0 and not args.json:
            hours = (i + 1) * INTERVAL / 3600
            print(f"  {hours:5.1f} h simulated, append CPU so far {append_cpu:6.1f} s", flush=True)
    end = START + scrapes * INTERVAL
    store.flush()
    gc.collect()
    rss_after = me.memory_info().rss
    stats = store.stats()

    with sqlite3.connect(f"file:{folder / 'tsdb' / 'series.db'}?mode=ro", uri=True) as db:
        raw_bytes, raw_n = db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)),0), COALESCE(SUM(n),0) FROM raw_chunks"
        ).fetchone()
        roll_bytes, roll_n = db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)),0), COALESCE(SUM(n),0) FROM rollup_chunks"
        ).fetchone()

    engine = QueryEngine(store)
    latency = "alwayson_gateway_request_duration_seconds_bucket[5m]"
    requests = "alwayson_gateway_requests_total"
    range_queries = [
        "sum by (service) (rate(bank_requests_total[5m]))",
        f"histogram_quantile(0.95, sum by (service, le) (rate({latency})))",
        "avg_over_time(alwayson_process_resident_memory_bytes[5m])",
    ]
    latencies = {}
    for query in range_queries:
        latencies[query] = median_seconds(lambda q=query: engine.range(q, end - 86400, end, 60))
    instant_queries = [
        "up == 0",
        f'sum by (service) (rate({requests}{{code="5xx"}}[5m]))'
        f" / sum by (service) (rate({requests}[5m])) > 0.05",
        f"histogram_quantile(0.95, sum by (service, le) (rate({latency}))) > 0.5",
    ]
    instant = {q: median_seconds(lambda q=q: engine.instant(q, end)) for q in instant_queries}
    store.close()
    began = time.perf_counter()
    reopened = SeriesStore(folder / "tsdb", retention)
    reopen_seconds = time.perf_counter() - began
    reopened.close()

    minutes = args.hours * 60
    figures = {
        "series": stats["series"],
        "simulated_hours": args.hours,
        "samples_appended": scrapes * len(bank),
        "append_cpu_seconds_per_minute": append_cpu / minutes,
        "append_worst_call_seconds": worst,
        "parse_cpu_seconds_per_minute": parse_per_round * 60 / INTERVAL,
        "rss_growth_bytes": rss_after - rss_before,
        "store_memory_estimate_bytes": stats["memory_bytes"],
        "head_samples": stats["head_samples"],
        "disk_bytes": stats["disk_bytes"],
        "raw_samples_on_disk": int(raw_n),
        "raw_bytes_per_sample": raw_bytes / raw_n if raw_n else None,
        "rollup_buckets": int(roll_n),
        "rollup_bytes_per_bucket": roll_bytes / roll_n if roll_n else None,
        "reopen_seconds": reopen_seconds,
        "range_24h_step_60s_seconds": latencies,
        "instant_seconds": instant,
        "python": platform.python_version(),
        "cpus": psutil.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"series {figures['series']}, {args.hours:g} h simulated at {INTERVAL:g} s "
            f"({figures['samples_appended']:,} samples)"
        )
        print(
            f"append: {figures['append_cpu_seconds_per_minute']:.3f} CPU s per simulated minute "
            f"(slowest append {worst * 1000:.0f} ms)"
        )
        parse = figures["parse_cpu_seconds_per_minute"]
        print(f"parse the 62 expositions of a scrape round: {parse:.3f} CPU s per minute")
        print(
            f"memory: RSS grew {figures['rss_growth_bytes'] / 1e6:.1f} MB; store estimate "
            f"{figures['store_memory_estimate_bytes'] / 1e6:.1f} MB "
            f"({stats['head_samples']:,} head samples x 16 B + index)"
        )
        print(
            f"disk: {figures['disk_bytes'] / 1e6:.1f} MB; "
            f"raw {figures['raw_bytes_per_sample'] or 0:.2f} B/sample ({int(raw_n):,}), "
            f"rollup {figures['rollup_bytes_per_bucket'] or 0:.2f} B/bucket ({int(roll_n):,})"
        )
        print(f"reopen (replay the head log): {reopen_seconds:.2f} s")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {psutil.cpu_count()} CPUs")
        print("              wall ms   CPU ms")
        for query, took in latencies.items():
            print(f"range 24h/60s {took['wall'] * 1000:7.1f} {took['cpu'] * 1000:8.1f}  {query}")
        for query, took in instant.items():
            print(f"instant       {took['wall'] * 1000:7.1f} {took['cpu'] * 1000:8.1f}  {query}")
    if args.dir is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
