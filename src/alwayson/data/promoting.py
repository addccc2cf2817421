"""Acts of a standby site: follow, take the lease, promote, and record the failover."""

from __future__ import annotations

import contextlib
from typing import Any

from alwayson.data.deciding import Decision, Role
from alwayson.data.engines import conninfo, query
from alwayson.data.failovers import fault_of, lease_free_at, with_wal_end
from alwayson.data.layout import SUPERUSER
from alwayson.data.leases import Lease, LeaseRefused, reclaimable
from alwayson.data.lsns import lsn_int
from alwayson.data.tending import Tender
from alwayson.util.errors import TemporaryError

ACQUIRE_DEADLINE = 1.5
PENDING_RECORD = 120.0
"""How long a failover record waits for the old primary's end of WAL."""
FIRST_WRITE_WAIT = 10.0
FIRST_WRITE_POLL = 0.05


async def standby_facts(st: Tender) -> None:
    st.replication = []
    try:
        rows = await st.observer.query(
            "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
            "extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, "
            "(SELECT status FROM pg_stat_wal_receiver), "
            "(SELECT received_tli FROM pg_stat_wal_receiver)",
            timeout=2,
        )
    except TemporaryError as exc:
        st.last_error = str(exc)
        return
    receive, replay, age, status, tli = rows[0]
    st.facts = {
        "receive_lsn": receive,
        "replay_lsn": replay,
        "replay_age_seconds": age,
        "receiver": status,
        "timeline": tli,
    }


async def acquire_and_promote(st: Tender, decision: Decision) -> str:
    """The lease is free: ask for it (epoch + 1), and promote once it is ours."""
    try:
        new, sent = await st.acquire(ACQUIRE_DEADLINE)
    except LeaseRefused as exc:
        st.detected_at = None  # not a takeover yet; date the one that happens
        return f"standby: cannot take the lease: {exc.reason}"
    st.hold(new, sent)
    return await promote(st, f"lease epoch {new.epoch} acquired {decision.why}")


async def promote(st: Tender, why: str) -> str:
    started = st.clock.wall()
    detected = st.detected_at or started
    before = Lease.from_json(st.view["lease"]) if st.view.get("lease") else None
    # Handed over: renew first, so our own view of the lease starts after etcd's
    # granted it, never before.
    if st.tenure is None and not await take_handed_lease(st):
        return "handed the lease but could not renew it yet; still a standby"
    lag = await lag_at_fault(st)
    st.role = Role.PRIMARY
    st.writable = False
    try:
        await query(st.admin_dsn(), "SELECT pg_promote(true, 30)", timeout=35)
    except TemporaryError as exc:
        return f"promotion failed: {exc}"
    promoted = st.clock.wall()
    st.write_conf([], None)
    (st.data / "standby.signal").unlink(missing_ok=True)
    await st.reload_conf()
    st.sync_standby = None
    st.sync_names = []
    await st.ensure_slots()
    st.writable = True
    writable_at = await first_write(st)
    lease = st.lease
    old = (st.view.get("sites") or {}).get((before.holder if before else None) or "") or {}
    reported = old.get("reported_at")
    fault, basis = fault_of(before, detected, float(reported) if reported else None)
    detect_basis = "when this site first saw the lease free to take"
    if detected < fault:
        # Two sites' clocks disagree (or the fault time is an estimate from the other
        # side): never a negative detection; say so.
        detect_basis += f" ({fault - detected:.2f}s before the recorded fault time; counted 0)"
        detected = fault
    kind = "failover" if "acquired" in why else "switchover-promotion"
    record = {
        "kind": kind,
        "database": st.name,
        "to": st.cfg.site,
        "from": (lease.previous_holder if lease else None),
        "epoch": lease.epoch if lease else None,
        "why": why,
        "replication": st.cfg.replication,
        "fault_at": fault,
        "fault_basis": basis,
        "lease_free_at": lease_free_at(before),
        "detected_at": detected,
        "promote_started_at": started,
        "promoted_at": promoted,
        "writable_at": writable_at,
        "detect_seconds": detected - fault,
        "promote_seconds": promoted - started,
        "rto_seconds": (writable_at - fault) if writable_at else None,
        "detect_basis": detect_basis,
        "rto_basis": (
            "from the fault time (fault_basis) to the first write committed through this "
            "site's database endpoint, as a client's would be"
        ),
        "lag_at_fault": lag,
    }
    st.detected_at = None
    ident = f"{int(promoted * 1000)}-{st.cfg.site}"
    with contextlib.suppress(TemporaryError):
        await st.board.record(st.name, "record", ident, record)
    if kind == "failover":
        st.pending_record = (ident, record, st.clock.monotonic() + PENDING_RECORD)
    await st.event("db-promoted", f"{st.cfg.site} promoted: {why}", record)
    return f"promoted: {why}"


async def complete_record(st: Tender) -> None:
    """Add the old primary's end of WAL to the failover record once it reports it: the
    WAL it had on disk that this site never received (acknowledged commits or not)."""
    pending = st.pending_record
    if pending is None:
        return
    ident, record, until = pending
    report = (st.view.get("sites") or {}).get(record.get("from") or "") or {}
    completed = with_wal_end(record, report.get("final_wal") or {})
    if completed is None:
        if st.clock.monotonic() > until:
            st.pending_record = None
        return
    try:
        await st.board.record(st.name, "record", ident, completed)
    except TemporaryError:
        return
    st.pending_record = None


async def take_handed_lease(st: Tender) -> bool:
    lease = st.lease
    if lease is None or lease.holder != st.cfg.site:
        return False
    sent = st.clock.monotonic()
    try:
        new = await st.board.lease(
            st.name,
            "renew",
            st.cfg.site,
            lease.epoch,
            st.cfg.ttl,
            ACQUIRE_DEADLINE,
            sync=None,
            synchronous=st.synchronous,
        )
    except LeaseRefused as exc:
        if not reclaimable(exc.lease, st.cfg.site, lease.epoch):
            st.last_error = str(exc)
            return False
        # The handed key expired before this site renewed it (it waited out a failsafe
        # promise, or was slow): nobody acquired since, so it takes it back, same epoch.
        sent = st.clock.monotonic()
        try:
            new = await st.board.lease(
                st.name, "reclaim", st.cfg.site, lease.epoch, st.cfg.ttl, ACQUIRE_DEADLINE
            )
        except (LeaseRefused, TemporaryError) as again:
            st.last_error = f"{exc}; reclaim: {again}"
            return False
    except TemporaryError as exc:
        st.last_error = str(exc)
        return False
    st.hold(new, sent)
    return True


async def lag_at_fault(st: Tender) -> dict[str, Any]:
    """How far this standby was behind when it took over. Its own positions are read
    now, just before promotion; the old primary's is its last report (every cycle, so
    it may have written more since: a lower bound). The old primary's end of WAL on
    disk, when it can tell, completes it later (``complete_record``)."""
    receive, replay = st.facts.get("receive_lsn"), st.facts.get("replay_lsn")
    with contextlib.suppress(TemporaryError):
        rows = await query(
            st.admin_dsn(),
            "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
            timeout=2,
        )
        receive, replay = rows[0][0] or receive, rows[0][1] or replay
    previous = st.lease.previous_holder if st.lease else None
    report = (st.view.get("sites") or {}).get(previous or "") or {}
    theirs = lsn_int(report.get("lsn"))
    mine = lsn_int(receive)
    reported_at = report.get("reported_at")
    return {
        "standby_receive_lsn": receive,
        "standby_replay_lsn": replay,
        "primary_last_reported_lsn": report.get("lsn"),
        "primary_report_age_seconds": (
            (st.board_now() - float(reported_at)) if reported_at else None
        ),
        "bytes_behind_last_report": max(0, theirs - mine) if theirs and mine else None,
        "replay_age_seconds": st.facts.get("replay_age_seconds"),
    }


async def first_write(st: Tender) -> float | None:
    """When a write through this site's endpoint first succeeds (the RTO's end)."""
    dsn = conninfo(st.cfg.endpoint, SUPERUSER, st.cfg.superuser_password)
    deadline = st.clock.monotonic() + FIRST_WRITE_WAIT
    while st.clock.monotonic() < deadline:
        try:
            await query(dsn, "SELECT txid_current()", timeout=2)
            return st.clock.wall()
        except TemporaryError:
            await st.clock.sleep(FIRST_WRITE_POLL)
    return None
