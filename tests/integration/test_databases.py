"""The geo-replicated PostgreSQL, with real PostgreSQL processes, real kills and real cuts.

Every test brings up its own platform (two workload sites and a witness) with one
database; clients write through the per-site endpoints (``DATABASE_URL``) and, for the
split-brain check, straight to both PostgreSQL instances. The cluster and its helpers
live in ``dbcluster.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from tests.integration.dbcluster import SITES, Cluster, Writers, db_spec, kill_primary_process
from tests.support import Platform, wait_for


def test_kill_primary_synchronous_loses_no_acknowledged_write(
    cluster: Callable[..., Cluster],
) -> None:
    made = cluster("synchronous")
    writers = Writers(made).start()
    try:
        wait_for("writes before the fault", lambda: len(writers.acked) > 200, timeout=30)
        killed_wall = time.time()
        killed = kill_primary_process(made, "jakarta")
        wait_for("surabaya promoted", lambda: made.role("surabaya") == "primary", timeout=30)
        wait_for("writes after the fault", lambda: writers.count_after(killed) > 100, timeout=30)
    finally:
        writers.stop()
    lost = {i for i, _ in writers.acked} - writers.final_ids()
    assert lost == set(), f"{len(lost)} acknowledged registrations lost: {sorted(lost)[:10]}"
    record = made.status()["recent"][-1]
    assert record["kind"] == "failover" and record["to"] == "surabaya"
    assert record["rto_seconds"] is not None and record["promote_seconds"] >= 0
    # The record's clock starts when the old primary's agent saw the process gone (its
    # watchdog polls every 20 ms), not at the later lease release.
    assert "process exited" in record["fault_basis"], record
    assert killed_wall <= record["fault_at"] < killed_wall + 1.0, record["fault_at"] - killed_wall
    assert record["fault_at"] <= record["lease_free_at"] <= record["writable_at"]
    times = sorted(at for _, at in writers.acked)
    gap, resumed = max((b - a, b) for a, b in itertools.pairwise(times) if b > killed - 1)
    print(
        f"sync kill -9: {len(writers.acked)} acknowledged, 0 lost, {len(writers.errors)} client "
        f"errors, longest gap between acknowledged writes {gap:.2f}s; writes resumed "
        f"{resumed - killed:.2f}s after the kill, record rto {record['rto_seconds']:.2f}s "
        f"(fault seen {record['fault_at'] - killed_wall:.3f}s after the kill, lease free "
        f"{record['lease_free_at'] - killed_wall:.2f}s); record {record}"
    )
    assert gap < 15


def test_kill_primary_asynchronous_reports_loss_and_lag(cluster: Callable[..., Cluster]) -> None:
    made = cluster("asynchronous")
    writers = Writers(made).start()
    try:
        wait_for("writes before the fault", lambda: len(writers.acked) > 200, timeout=30)
        killed = kill_primary_process(made, "jakarta")
        wait_for("surabaya promoted", lambda: made.role("surabaya") == "primary", timeout=30)
        wait_for("writes after the fault", lambda: writers.count_after(killed) > 100, timeout=30)
    finally:
        writers.stop()
    lost = {i for i, _ in writers.acked} - writers.final_ids()
    record = made.status()["recent"][-1]
    assert record["replication"] == "asynchronous"
    assert "lag_at_fault" in record and "bytes_behind_last_report" in record["lag_at_fault"]
    assert not (made.status()["lease"] or {}).get("synchronous")
    # The old primary's end of WAL on disk completes the record: what the new primary
    # never received (every acknowledged commit the standby lacked is inside it).
    lag = wait_for(
        "the record completed with the old primary's end of WAL",
        lambda: (
            (found := made.record(kind="failover", epoch=record["epoch"]))
            and "old_primary_wal_end_lsn" in found["lag_at_fault"]
            and found["lag_at_fault"]
        ),
        timeout=30,
    )
    if lost:
        assert lag["wal_bytes_not_received"] > 0, lag
    print(
        f"async kill -9: {len(writers.acked)} acknowledged, {len(lost)} lost; "
        f"{lag['wal_bytes_not_received']} WAL bytes not received (last report said "
        f"{lag['bytes_behind_last_report']}); {record}"
    )


@pytest.mark.parametrize("replication", ["synchronous", "asynchronous"])
def test_cut_off_primary_site_never_two_writable_primaries(
    cluster: Callable[..., Cluster], replication: str
) -> None:
    # Asynchronous is the case that proves fencing: nothing else stops the cut-off
    # primary's commits (in synchronous mode they also wait for the cut standby).
    made = cluster(replication)
    made.execute(made.endpoint("jakarta"), "CREATE TABLE probe (site text, at float8)")
    successes: dict[str, list[float]] = {site: [] for site in SITES}
    stop = threading.Event()

    def hammer(site: str) -> None:
        # Straight to each PostgreSQL, not through any endpoint or link.
        while not stop.is_set():
            try:
                with psycopg.connect(made.direct(site), autocommit=True, connect_timeout=1) as conn:
                    while not stop.is_set():
                        conn.execute("INSERT INTO probe VALUES (%s, %s)", (site, time.time()))
                        successes[site].append(time.monotonic())
            except psycopg.Error:
                stop.wait(0.02)

    threads = [threading.Thread(target=hammer, args=(s,), daemon=True) for s in SITES]
    for thread in threads:
        thread.start()
    try:
        wait_for("writes on jakarta", lambda: len(successes["jakarta"]) > 50, timeout=30)
        if replication == "synchronous":
            # Only a standby the lease names as having every commit may take over.
            wait_for(
                "surabaya named the synchronous standby",
                lambda: (made.status()["lease"] or {}).get("sync_standby") == "surabaya",
                timeout=30,
            )
        made.cut(("jakarta", "surabaya"), ("jakarta", "witness"))
        cut_at = time.monotonic()
        wait_for("surabaya promoted", lambda: made.role("surabaya") == "primary", timeout=30)
        wait_for("writes on surabaya", lambda: len(successes["surabaya"]) > 50, timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        made.cut()
    last_old = max(successes["jakarta"])
    first_new = min(successes["surabaya"])
    ttl = 6.0
    assert last_old < cut_at + ttl, "the cut-off primary accepted writes after its lease ttl"
    assert last_old < first_new, (
        f"two primaries accepted writes at once: jakarta until {last_old - cut_at:.2f}s, "
        f"surabaya from {first_new - cut_at:.2f}s after the cut"
    )
    assert made.role("jakarta") == "fenced"
    if replication == "asynchronous":
        # It fences itself ttl - margin (4 s) after its last renewal, at most 2 s before the cut.
        assert last_old - cut_at > 1.0, "the cut-off primary stopped for another reason"
    print(
        f"partition ({replication}): jakarta's last write {last_old - cut_at:.2f}s after "
        f"the cut, surabaya's first {first_new - cut_at:.2f}s after "
        f"(gap {first_new - last_old:.2f}s)"
    )


def test_switchover_under_load_loses_nothing_and_a_lost_primary_rejoins_with_rewind(
    cluster: Callable[..., Cluster],
) -> None:
    made = cluster("synchronous")
    writers = Writers(made).start()
    try:
        wait_for("writes before the switch", lambda: len(writers.acked) > 200, timeout=30)
        switched = time.monotonic()
        result = json.loads(
            made.platform.cli("db", "switchover", "--to", "surabaya", "--json").stdout
        )
        assert result["ok"] and result["to"] == "surabaya"
        wait_for("writes after the switch", lambda: writers.count_after(switched) > 200, timeout=30)
    finally:
        writers.stop()
    during = [e for e in writers.errors if e[0] >= switched]
    lost = {i for i, _ in writers.acked} - writers.final_ids()
    assert lost == set()
    assert made.role("jakarta") == "standby"
    print(f"switchover: {len(writers.acked)} acknowledged, 0 lost, {len(during)} client errors")

    # Until jakarta is synchronous again, losing surabaya must NOT promote jakarta by itself
    # (it may lack acknowledged commits); once it is, it may.
    wait_for(
        "jakarta synchronous again",
        lambda: (made.status()["lease"] or {}).get("sync_standby") == "jakarta",
        timeout=30,
    )
    # Now lose surabaya's primary, write on jakarta, and bring surabaya back with pg_rewind.
    kill_primary_process(made, "surabaya")
    wait_for("jakarta promoted", lambda: made.role("jakarta") == "primary", timeout=30)
    made.primary()
    made.execute(made.endpoint("jakarta"), "INSERT INTO registrations (id) VALUES (-1), (-2)")
    # surabaya rejoins by itself (no command) with pg_rewind once jakarta holds the lease.
    back = wait_for("surabaya's rejoin record", lambda: made.record(kind="rejoin"), timeout=60)
    assert back["ok"] and back["method"] == "rewind" and back["site"] == "surabaya", back
    wait_for("surabaya streaming", lambda: made.agent("surabaya").get("receiver") == "streaming")
    wait_for(
        "surabaya caught up",
        lambda: (
            made.execute(made.direct("surabaya"), "SELECT count(*) FROM registrations")
            == made.execute(made.direct("jakarta"), "SELECT count(*) FROM registrations")
        ),
    )
    checksum = "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM registrations"
    assert made.execute(made.direct("surabaya"), checksum) == made.execute(
        made.direct("jakarta"), checksum
    )


def test_backup_pitr_verify_and_bad_input(cluster: Callable[..., Cluster]) -> None:
    made = cluster("synchronous")
    ep = made.endpoint("jakarta")
    made.execute(ep, "CREATE TABLE t (id int PRIMARY KEY)")
    made.execute(ep, "INSERT INTO t SELECT generate_series(1, 100)")
    created = json.loads(made.platform.cli("backup", "create", "--json", timeout=600).stdout)
    backup = created["backup"]
    assert backup["verified"] is True, backup
    made.execute(ep, "INSERT INTO t SELECT generate_series(101, 150)")
    target = made.execute(ep, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0]
    made.execute(ep, "INSERT INTO t SELECT generate_series(151, 200)")
    restored = json.loads(
        made.platform.cli(
            "backup", "restore", "--to", str(target), "--into", "pitr", "--json", timeout=600
        ).stdout
    )
    assert restored["ok"], restored
    rows = made.execute(restored["url"], "SELECT count(*), min(id), max(id) FROM t")
    assert rows == [(150, 1, 150)]
    made.platform.cli("backup", "drop", "pitr")

    # A restore time before the oldest backup: refused with the oldest restorable time.
    early = made.platform.cli("backup", "restore", "--to", "2020-01-01T00:00:00Z", check=False)
    assert early.returncode != 0 and "oldest restorable time" in early.stderr + early.stdout

    # A corrupted file in the backup: verify says so and records it.
    folder = Path(backup["path"])
    victim = next(
        p for p in sorted((folder / "base").rglob("*")) if p.is_file() and p.stat().st_size > 200
    )
    with victim.open("r+b") as handle:
        handle.seek(100)
        original = handle.read(1)
        handle.seek(100)
        handle.write(bytes([original[0] ^ 0xFF]))
    bad = made.platform.cli("backup", "verify", backup["id"], check=False, timeout=600)
    assert bad.returncode != 0 and "checksum mismatch" in bad.stdout + bad.stderr
    listed = json.loads(made.platform.cli("backup", "list", "--json").stdout)
    assert [b["verified"] for b in listed if b["id"] == backup["id"]] == [False]

    # A switchover to a standby that is too far behind: refused, nothing moves.
    made.execute(made.direct("surabaya"), "SELECT pg_wal_replay_pause()")
    made.execute(
        ep,
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 60000) g",
    )
    wait_for(
        "standby reported behind",
        lambda: any(
            r.get("lag_bytes", 0) > 16 * 1024 * 1024
            for r in made.agent("jakarta").get("replication", [])
        ),
        timeout=30,
    )
    far = made.platform.cli("db", "switchover", "--to", "surabaya", check=False)
    assert far.returncode != 0 and "behind" in far.stdout + far.stderr
    assert made.role("jakarta") == "primary"
    made.execute(made.direct("surabaya"), "SELECT pg_wal_replay_resume()")


def test_full_backup_disk_and_controller_restart(cluster: Callable[..., Cluster]) -> None:
    made = cluster("synchronous", backup={"schedule": None, "keep_free": "1000TB"})
    before = {site: made.agent(site)["pid"] for site in SITES}
    full = made.platform.cli("backup", "create", check=False, timeout=120)
    assert full.returncode != 0 and "keep_free" in full.stdout + full.stderr
    assert "primary is untouched" in full.stdout + full.stderr
    repo = made.platform.state_dir / "data" / "bank" / "jakarta" / "repo" / "base"
    assert list(repo.iterdir()) == []

    # Kill the controller outright and start it again: the databases do not notice.
    pid = made.platform.controller_pid()
    assert pid is not None
    epoch = made.status()["lease"]["epoch"]
    os.kill(pid, signal.SIGKILL)
    made.platform.cli("up", timeout=180)
    assert {site: made.agent(site)["pid"] for site in SITES} == before
    assert made.status()["lease"]["epoch"] == epoch
    assert made.role("jakarta") == "primary" and made.role("surabaya") == "standby"


def test_spec_naming_an_unknown_site_is_refused(make_platform: Callable[..., Platform]) -> None:
    spec = db_spec()
    spec["databases"][0]["primary_site"] = "bandung"
    platform = make_platform(spec)
    result = platform.cli("validate", str(platform.spec_path), check=False)
    assert result.returncode != 0
    assert "databases[0:bank].primary_site" in result.stdout + result.stderr
    assert "'bandung' is not a workload site" in result.stdout + result.stderr
