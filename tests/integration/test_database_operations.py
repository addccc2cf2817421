"""Operating the geo-replicated PostgreSQL: a lost standby in both ``on_standby_loss``
modes, forced failover / failback / switchover end to end through the CLI with their
records, scheduled backups with retention, backup mirroring across a cut link, and
restored instances that outlive their agent. Real PostgreSQL, real kills, real cuts.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.dbcluster import Cluster, Pending, Writers, kill_pid
from tests.support import wait_for


def newest_segment(folder: Path) -> str | None:
    names = sorted(p.name for p in folder.iterdir() if len(p.name) == 24)
    return names[-1] if names else None


def test_lost_standby_with_continue_alerts_then_clears_and_mirroring_waits_out_the_cut(
    cluster: Callable[..., Cluster],
) -> None:
    made = cluster("synchronous")
    ep = made.endpoint("jakarta")
    made.execute(ep, "CREATE TABLE t (id int PRIMARY KEY)")
    first = made.cli_json("backup", "create", "--no-verify", timeout=300)["backup"]
    wait_for(
        "the first backup mirrored to surabaya",
        lambda: (made.repo("surabaya") / "base" / first["id"] / "alwayson-backup.json").exists(),
    )

    made.cut(("jakarta", "surabaya"))
    cut_at = time.monotonic()
    try:
        wait_for(
            "jakarta without a streaming standby",
            lambda: made.agent("jakarta")["standby_missing_for"] is not None,
        )
        pending = Pending(ep, "INSERT INTO t VALUES (1)")
        alert = wait_for(
            "the RPO alert on jakarta",
            lambda: made.agent("jakarta")["alert"] if made.agent("jakarta")["alert"] else None,
            timeout=30,
        )
        assert "RPO=0 no longer holds" in alert
        alerted = time.monotonic() - cut_at
        wait_for("the commit going on without the standby", lambda: pending.committed, timeout=15)
        assert pending.done_at is not None
        waited = pending.done_at - pending.started
        assert made.agent("jakarta")["alert_kind"] == "rpo"
        assert made.events("db-rpo-alert"), "no db-rpo-alert event"
        status = made.status()
        assert (status["lease"] or {}).get("sync_standby") is None
        assert any("RPO=0" in a for a in status["alerts"])

        # Backups and WAL archiving go on; the copies to surabaya wait for the link.
        during = made.cli_json("backup", "create", "--no-verify", timeout=300)["backup"]
        made.execute(made.direct("jakarta"), "SELECT pg_switch_wal()")
        made.execute(ep, "INSERT INTO t VALUES (2)")
        made.execute(made.direct("jakarta"), "SELECT pg_switch_wal()")
        segment = wait_for(
            "a new WAL segment archived on jakarta",
            lambda: (
                (s := newest_segment(made.repo("jakarta") / "wal"))
                and s > (newest_segment(made.repo("surabaya") / "wal") or "")
                and s
            ),
        )
        assert not (made.repo("surabaya") / "base" / during["id"]).exists()
        assert not (made.repo("surabaya") / "wal" / segment).exists()
        assert made.role("jakarta") == "primary" and made.role("surabaya") == "standby"
    finally:
        made.cut()
    healed = time.monotonic()

    wait_for(
        "the backup made during the cut mirrored after the heal",
        lambda: (made.repo("surabaya") / "base" / during["id"] / "alwayson-backup.json").exists(),
        timeout=30,
    )
    wait_for(
        "the WAL archived during the cut in surabaya's repository",
        lambda: (made.repo("surabaya") / "wal" / segment).exists(),
        timeout=30,
    )
    mirrored = time.monotonic() - healed

    def restored() -> bool:
        agent = made.agent("jakarta")
        rows = agent.get("replication") or []
        lease = made.status()["lease"] or {}
        return (
            agent["alert"] is None
            and any(r["sync_state"] == "sync" for r in rows)
            and lease.get("sync_standby") == "surabaya"
        )

    wait_for("synchronous again and the alert cleared", restored, timeout=60)
    cleared = time.monotonic() - healed
    assert made.events("db-rpo-restored"), "no db-rpo-restored event"
    assert made.status()["alerts"] == []
    assert made.execute(made.direct("surabaya"), "SELECT count(*) FROM t") == [(2,)]
    # Both archivers (archive_mode=always) accept the copies the other site mirrored in.
    for site in ("jakarta", "surabaya"):
        failed = made.execute(
            made.direct(site), "SELECT failed_count, last_failed_wal FROM pg_stat_archiver"
        )
        assert failed[0][0] == 0, f"{site}'s archiver failed: {failed}"
    print(
        f"continue: a commit waited {waited:.2f}s for the lost standby (standby_timeout 5s), "
        f"alert seen {alerted:.2f}s after the cut; after the heal the "
        f"copies reached surabaya in {mirrored:.2f}s and RPO=0 held again in {cleared:.2f}s"
    )


def test_lost_standby_with_block_holds_commits_until_it_returns(
    cluster: Callable[..., Cluster],
) -> None:
    made = cluster("synchronous", on_standby_loss="block", standby_timeout="2s")
    ep = made.endpoint("jakarta")
    made.execute(ep, "CREATE TABLE t (id int PRIMARY KEY)")
    made.cut(("jakarta", "surabaya"))
    try:
        wait_for(
            "jakarta without a streaming standby",
            lambda: made.agent("jakarta")["standby_missing_for"] is not None,
        )
        pending = Pending(ep, "INSERT INTO t VALUES (1)")
        wait_for(
            "the blocked-writes alert on jakarta",
            lambda: made.agent("jakarta")["alert_kind"] == "blocked",
            timeout=30,
        )
        # Three standby_timeouts without the standby: `continue` would have let it through.
        wait_for(
            "the standby missing for 6s",
            lambda: (made.agent("jakarta")["standby_missing_for"] or 0) > 6.0,
            timeout=30,
        )
        assert not pending.committed and pending.error is None, pending.error
        blocked_for = time.monotonic() - pending.started
        # Every acknowledged commit is still on surabaya: it stays eligible to take over.
        assert (made.status()["lease"] or {}).get("sync_standby") == "surabaya"
        assert made.events("db-writes-blocked")
        assert made.events("db-rpo-alert") == []
        assert made.role("jakarta") == "primary"
    finally:
        made.cut()
    healed = time.monotonic()
    wait_for("the blocked commit acknowledged", lambda: pending.committed, timeout=60)
    assert pending.error is None
    assert pending.done_at is not None and pending.done_at >= healed
    assert made.execute(made.direct("surabaya"), "SELECT count(*) FROM t") == [(1,)]
    wait_for("the alert cleared", lambda: made.agent("jakarta")["alert"] is None, timeout=30)
    assert made.events("db-writes-resumed")
    print(
        f"block: a commit stayed unacknowledged for {blocked_for:.2f}s while the standby was "
        f"cut off and went through {pending.done_at - healed:.2f}s after the link healed"
    )


def _gap(writers: Writers, after: float, before: float) -> float:
    """The longest time between two acknowledged writes in [after, before] (monotonic)."""
    times = sorted(at for _, at in writers.acked if after - 1 < at < before)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def test_forced_failover_rejoin_and_failback_are_recorded(
    cluster: Callable[..., Cluster],
) -> None:
    """A forced failover; the old primary rejoins as a standby with no command typed;
    `db failback` (a switchover back to the spec's primary site) moves the primary home."""
    made = cluster("synchronous")
    epoch = made.status()["lease"]["epoch"]
    writers = Writers(made).start()
    try:
        wait_for("writes before the failover", lambda: len(writers.acked) > 100, timeout=30)
        asked_wall, asked = time.time(), time.monotonic()
        forced = made.cli_json("db", "failover", "--to", "surabaya", timeout=120)
        assert forced["ok"] and forced["to"] == "surabaya", forced
        wait_for("writes after the failover", lambda: writers.count_after(asked) > 100)
        failed_over = time.monotonic()

        wait_for(
            "jakarta rejoined as the synchronous standby, by itself",
            lambda: (made.status()["lease"] or {}).get("sync_standby") == "jakarta",
            timeout=60,
        )

        switched = time.monotonic()
        switch = made.cli_json("db", "failback", timeout=120)
        assert switch["ok"], switch
        wait_for("writes after the switchover", lambda: writers.count_after(switched) > 100)
    finally:
        writers.stop()
    lost = {i for i, _ in writers.acked} - writers.final_ids()
    assert lost == set(), f"{len(lost)} acknowledged writes lost"

    failover = made.record(kind="failover", to="surabaya")
    assert failover is not None, made.records()
    # The CLI returns the new primary's record (before the old primary's end of WAL
    # completes it).
    shown_by_cli = {k: v for k, v in forced["record"].items() if k != "lag_at_fault"}
    assert shown_by_cli == {k: v for k, v in failover.items() if k != "lag_at_fault"}
    assert failover["from"] == "jakarta" and failover["epoch"] == epoch + 1
    assert "revoked" in failover["fault_basis"]
    assert asked_wall <= failover["fault_at"] < asked_wall + 5
    assert (
        failover["fault_at"]
        <= failover["lease_free_at"]
        <= failover["detected_at"]
        <= failover["promoted_at"]
        <= failover["writable_at"]
    ), failover
    assert failover["rto_seconds"] == failover["writable_at"] - failover["fault_at"]
    assert failover["promote_seconds"] >= 0 and failover["detect_seconds"] >= 0
    assert {"standby_receive_lsn", "bytes_behind_last_report"} <= set(failover["lag_at_fault"])

    failback = made.record(kind="rejoin")
    assert failback is not None, made.records()
    assert failback["ok"] and failback["why"], failback
    assert failback["site"] == "jakarta" and failback["from"] == "jakarta"
    assert failback["follows"] == "surabaya" and failback["method"].startswith(("rewind", "re-"))
    assert failback["epoch"] == epoch + 1 and failback["seconds"] > 0
    assert failback["started_at"] <= failback["finished_at"]
    if failback["method"] == "rewind":
        assert failback["diverged_at"], failback

    assert switch["kind"] == "failback" and switch["from"] == "surabaya"
    assert switch["to"] == "jakarta" and switch["epoch"] == epoch + 2
    assert switch["lost_writes"] == 0 and switch["final_lsn"]
    assert switch["started_at"] <= switch["stopped_at"] <= switch["handed_at"]
    promotion = made.record(kind="switchover-promotion", to="jakarta")
    assert promotion is not None
    assert promotion["from"] == "surabaya" and promotion["epoch"] == epoch + 2
    assert abs(promotion["fault_at"] - switch["stopped_at"]) < 0.01
    assert "switchover" in promotion["fault_basis"]
    assert promotion["rto_seconds"] == promotion["writable_at"] - switch["stopped_at"]
    assert made.role("jakarta") == "primary" and made.role("surabaya") == "standby"
    shown = made.platform.cli("db", "status").stdout
    assert "rejoin: jakarta follows surabaya" in shown, shown
    assert "switchover-promotion surabaya → jakarta" in shown, shown
    assert "failback surabaya → jakarta" in shown, shown

    failover_gap = _gap(writers, asked, failed_over)
    switch_gap = _gap(writers, switched, time.monotonic())
    print(
        f"forced failover: record rto {failover['rto_seconds']:.2f}s from the revocation "
        f"(promote {failover['promote_seconds']:.2f}s), longest client gap "
        f"{failover_gap:.2f}s; failback {failback['method']} in "
        f"{failback['seconds']:.2f}s (diverged at {failback['diverged_at']}, "
        f"{failback['discarded_wal_bytes']} WAL bytes discarded); switchover: record rto "
        f"{promotion['rto_seconds']:.2f}s from the hold on writes, longest client gap "
        f"{switch_gap:.2f}s; "
        f"{len(writers.acked)} acknowledged, 0 lost, {len(writers.errors)} client errors"
    )
    print("records:", json.dumps([failover, failback, switch, promotion], default=str)[:3000])


def _ids(repo: Path) -> list[str]:
    return sorted(
        p.name for p in (repo / "base").iterdir() if (p / "alwayson-backup.json").exists()
    )


def _age(repo: Path, ident: str, seconds: float) -> None:
    """Make a backup's record say it finished ``seconds`` ago (as retention reads it)."""
    path = repo / "base" / ident / "alwayson-backup.json"
    record = json.loads(path.read_text())
    record["finished_at"] = time.time() - seconds
    path.write_text(json.dumps(record))


def test_scheduled_backups_run_and_retention_removes_old_ones(
    cluster: Callable[..., Cluster],
) -> None:
    made = cluster(
        "asynchronous",
        backup={"schedule": "* * * * * */10", "retention": {"count": 2, "age": "1h"}},
    )
    made.execute(made.endpoint("jakarta"), "CREATE TABLE t (id int)")
    seen: list[str] = []

    def listed() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = made.cli_json("backup", "list")
        seen.extend(b["id"] for b in found if b["id"] not in seen)
        return found

    def three() -> bool:
        listed()
        return len(seen) >= 3

    wait_for("three scheduled backups", three, timeout=120)
    first = sorted(seen)[0]
    # Count 2: the first is gone from both repositories and from `backup list`.
    wait_for(
        "the oldest backup removed by count on both sites",
        lambda: all(first not in _ids(made.repo(s)) for s in ("jakarta", "surabaya")),
        timeout=30,
    )
    wait_for("backup list without it", lambda: first not in [b["id"] for b in listed()])
    # The schedule keeps running (a slow machine may have made and retired more by now):
    # judge what is there now, not the ids seen earlier.
    found = listed()
    assert found and all(b["verified"] is True for b in found[:-1]), found
    assert made.events("db-backup-scheduled")
    assert made.events("db-backup-failed") == []

    # WAL older than what the oldest kept backup needs is gone too.
    def wal_and_oldest_start() -> tuple[str, str] | None:
        repo = made.repo("jakarta")
        for ident in _ids(repo):
            try:
                record = json.loads((repo / "base" / ident / "alwayson-backup.json").read_text())
            except FileNotFoundError:
                continue  # removed by retention just now
            segments = [p.name for p in (repo / "wal").iterdir() if len(p.name) == 24]
            if segments:
                return min(segments), str(record["start_wal"])
        return None

    wait_for(
        "WAL older than the oldest kept backup removed",
        lambda: (got := wal_and_oldest_start()) is not None and got[0] >= got[1],
        timeout=30,
    )

    # Age 1h: a backup whose record says it finished two hours ago goes, although the
    # count would keep it (the newest one: count keeps it for two more schedules).
    victim = _ids(made.repo("jakarta"))[-1]
    for site in ("jakarta", "surabaya"):
        if victim in _ids(made.repo(site)):
            _age(made.repo(site), victim, 7200)
    wait_for(
        "the old backup removed by age on both sites",
        lambda: all(victim not in _ids(made.repo(s)) for s in ("jakarta", "surabaya")),
        timeout=30,
    )
    wait_for(
        "both sites keep the same backups",
        lambda: _ids(made.repo("jakarta")) == _ids(made.repo("surabaya")),
        timeout=30,
    )
    print(
        f"scheduled backups every 10s: {len(seen)} made ({', '.join(sorted(seen))}); "
        f"{first} removed by count, {victim} by age; kept {_ids(made.repo('jakarta'))}"
    )


def test_a_restored_instance_outlives_its_agent(cluster: Callable[..., Cluster]) -> None:
    made = cluster("asynchronous")
    ep = made.endpoint("jakarta")
    made.execute(ep, "CREATE TABLE t (id int)")
    made.execute(ep, "INSERT INTO t SELECT generate_series(1, 10)")
    made.cli_json("backup", "create", "--no-verify", timeout=300)
    restored = made.cli_json("backup", "restore", "--into", "kept", timeout=300)
    assert restored["ok"], restored
    url = restored["url"]
    made.execute(url, "CREATE TABLE marker (note text)")
    made.execute(url, "INSERT INTO marker VALUES ('written after the restore')")
    before = made.agent("jakarta")["restores"]["kept"]["pid"]

    started = made.agent_started_at("jakarta")
    kill_pid(made.agent_pid("jakarta"))
    killed = time.monotonic()
    wait_for(
        "jakarta's agent started again by the controller",
        lambda: made.agent_started_at("jakarta") not in (None, started),
        timeout=90,
    )
    rows = wait_for(
        "the restored instance answering again",
        lambda: made.execute(url, "SELECT note FROM marker"),
        timeout=90,
    )
    back = time.monotonic() - killed
    assert rows == [("written after the restore",)]
    assert made.execute(url, "SELECT count(*) FROM t") == [(10,)]
    # It may answer SQL a moment before its agent lists it again.
    after = wait_for(
        "the agent listing the restored instance again",
        lambda: made.agent("jakarta")["restores"].get("kept"),
        timeout=30,
    )
    assert after["pid"] != before and after["address"] == restored["address"]
    assert made.events("db-restore-restarted")

    # Dropped by its own site's agent, whichever role that site has now.
    made.cli_json("backup", "drop", "kept", timeout=120)
    assert "kept" not in made.agent("jakarta")["restores"]
    assert not Path(restored["path"]).exists()
    print(
        f"restored instance: answering again {back:.2f}s after its agent was killed "
        f"(jakarta is now {made.role('jakarta')})"
    )
