"""What the controller adds to the scraped metrics: database figures from the agents'
reports, and a site that is down only when nothing in it answered two scrapes running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.unit.controlparts import Parts
from tests.unit.controlparts import observatory as observatory_on

from alwayson.control.observing import Observatory
from alwayson.metrics.model import Sample
from alwayson.spec.loading import load_spec_text

SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1"
    run: python -m bank.accounts
    port: 8002
databases:
  - name: bank
    primary_site: jakarta
    services: [accounts]
"""


class FakeDatabases:
    def __init__(self, backups: list[dict[str, Any]]) -> None:
        self._backups = backups

    async def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "bank",
                "sites": [
                    {
                        "site": "jakarta",
                        "role": "primary",
                        "writable": True,
                        "pid": 10,
                        "stale": False,
                        "connections": 7,
                        "xact_total": 1234,
                        "alert": None,
                        "replication": [
                            {"standby": "surabaya", "lag_bytes": 4096, "lag_seconds": 0.5}
                        ],
                    },
                    {
                        "site": "surabaya",
                        "role": "standby",
                        "writable": False,
                        "pid": None,
                        "stale": True,
                        "alert": "RPO=0 no longer holds",
                    },
                ],
            }
        ]

    async def backups(self, name: str) -> list[dict[str, Any]]:
        return self._backups


def observatory(tmp_path: Path, backups: list[dict[str, Any]]) -> tuple[Observatory, Any]:
    spec = load_spec_text(SPEC, tmp_path / "alwayson.yaml", check_commands=False).spec
    return observatory_on(Parts(spec), tmp_path, FakeDatabases(backups)), spec


def by_name(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def test_database_figures_come_from_the_agents_reports(tmp_path: Path) -> None:
    obs, spec = observatory(
        tmp_path,
        [
            {"id": "a", "finished_at": 100.0, "verified": True},
            {"id": "b", "finished_at": 200.0, "verified": False},
        ],
    )
    got = by_name(asyncio.run(obs._database_samples(spec)))
    j = (("db", "bank"), ("site", "jakarta"))
    s = (("db", "bank"), ("site", "surabaya"))
    assert got[("alwayson_db_up", j)] == 1 and got[("alwayson_db_up", s)] == 0
    assert got[("alwayson_db_primary", j)] == 1 and got[("alwayson_db_primary", s)] == 0
    assert got[("alwayson_db_connections", j)] == 7
    assert got[("alwayson_db_xact_total", j)] == 1234
    assert got[("alwayson_db_replication_lag_bytes", s)] == 4096
    assert got[("alwayson_db_replication_lag_seconds", s)] == 0.5
    assert got[("alwayson_db_rpo_alert", s)] == 1 and got[("alwayson_db_rpo_alert", j)] == 0
    db = (("db", "bank"),)
    assert got[("alwayson_db_last_backup_timestamp_seconds", db)] == 200.0
    assert got[("alwayson_db_last_verified_backup_timestamp_seconds", db)] == 100.0
    assert got[("alwayson_db_backup_verify_failures", db)] == 1


def test_without_a_verified_backup_the_clock_starts_when_first_seen(tmp_path: Path) -> None:
    obs, spec = observatory(tmp_path, [])
    first = by_name(asyncio.run(obs._database_samples(spec)))
    again = by_name(asyncio.run(obs._database_samples(spec)))
    key = ("alwayson_db_last_verified_backup_timestamp_seconds", (("db", "bank"),))
    assert first[key] > 0 and again[key] == first[key]


def test_the_specs_retention_reaches_the_store_but_not_its_rollup_step(tmp_path: Path) -> None:
    text = SPEC + "metrics:\n  retention: {raw: 2h, rollup: 3d, rollup_step: 5m}\n"
    spec = load_spec_text(text, tmp_path / "alwayson.yaml", check_commands=False).spec
    obs = observatory_on(Parts(spec), tmp_path)
    step = obs.series.retention.rollup_step
    obs._apply_retention(spec)
    assert (obs.series.retention.raw, obs.series.retention.rollup) == (7200.0, 3 * 86400.0)
    assert obs.series.retention.rollup_step == step == 60.0


def test_traffic_per_service_and_site_comes_from_three_grouped_queries(tmp_path: Path) -> None:
    obs, spec = observatory(tmp_path, [])
    gateway = {"job": "gateways", "instance": "gateway@jakarta", "service": "accounts"}

    def requests(site: str, code: str, total: float) -> Sample:
        labels = {**gateway, "site": site, "version": "1", "code": code}
        return Sample("alwayson_gateway_requests_total", labels, total)

    def bucket(site: str, le: str, total: float) -> Sample:
        labels = {**gateway, "site": site, "version": "1", "le": le}
        return Sample("alwayson_gateway_request_duration_seconds_bucket", labels, total)

    t0 = 1_800_000_000.0
    for at, ok, bad in ((t0, 0.0, 0.0), (t0 + 10, 90.0, 10.0), (t0 + 20, 180.0, 20.0)):
        obs.series.append(
            [
                requests("jakarta", "2xx", ok),
                requests("jakarta", "5xx", bad),
                bucket("jakarta", "0.1", ok + bad),
                bucket("jakarta", "+Inf", ok + bad),
            ],
            at,
        )
    rows = {(r["service"], r["site"]): r for r in obs._measure_traffic(spec, t0 + 20)}
    jakarta = rows[("accounts", "jakarta")]
    # What the autoscaler's own per-service query says (PromQL's extrapolated rate).
    single = obs.scaling_metrics("accounts", "jakarta", 30.0, t0 + 20)
    assert jakarta["rps"] == pytest.approx(single["rps"]) == pytest.approx(200 / 30)
    assert jakarta["p95_seconds"] == pytest.approx(single["p95"])
    assert jakarta["error_rate"] == pytest.approx(0.1)
    assert 0 < jakarta["p95_seconds"] <= 0.1
    assert rows[("accounts", "surabaya")] == {
        "site": "surabaya",
        "service": "accounts",
        "rps": None,
        "error_rate": None,
        "p95_seconds": None,
    }
    obs.series.close()


class Reports:
    """One primary report whose synchronous standby the test sets."""

    def __init__(self) -> None:
        self.sync_standby: str | None = None

    async def status(self) -> list[dict[str, Any]]:
        primary = {"site": "surabaya", "role": "primary", "writable": True, "pid": 9}
        fenced = {"site": "jakarta", "role": "fenced", "writable": False, "pid": None}
        return [
            {
                "name": "bank",
                "sites": [{**primary, "sync_standby": self.sync_standby}, fenced],
            }
        ]

    async def backups(self, name: str) -> list[dict[str, Any]]:
        return []


def test_rpo_zero_lost_fires_after_standby_timeout_without_a_sync_standby(
    tmp_path: Path,
) -> None:
    """After a failover the new primary has no standby to lose (its agent raises no alert)
    and the old one stays fenced: the controller still sees RPO=0 broken."""
    from alwayson.control.samples import database_samples

    spec = load_spec_text(SPEC, tmp_path / "alwayson.yaml", check_commands=False).spec
    timeout = spec.databases[0].standby_timeout
    assert spec.databases[0].replication == "synchronous"
    reports, since = Reports(), {}  # type: ignore[var-annotated]
    key = ("alwayson_db_rpo_alert", (("db", "bank"), ("site", "surabaya")))

    def alert(now: float) -> float:
        return by_name(asyncio.run(database_samples(spec, reports, since, now)))[key]

    assert alert(1000.0) == 0
    assert alert(1000.0 + timeout - 0.5) == 0
    assert alert(1000.0 + timeout) == 1
    reports.sync_standby = "jakarta"  # the old primary rejoined and is synchronous again
    assert alert(1000.0 + timeout + 5) == 0
    reports.sync_standby = None
    assert alert(1000.0 + timeout + 6) == 0  # the clock starts again
    assert alert(1000.0 + 2 * timeout + 6) == 1
