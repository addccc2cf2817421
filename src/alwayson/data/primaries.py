"""Acts of a site whose PostgreSQL is the primary: read its standbys, keep synchronous
replication honest (:func:`~alwayson.data.deciding.decide_sync`), and record its exit."""

from __future__ import annotations

from alwayson.data.deciding import (
    Role,
    StandbyRow,
    SyncDecision,
    SyncStep,
    SyncView,
    decide_sync,
)
from alwayson.data.engines import wait_backends_gone
from alwayson.data.tending import Tender
from alwayson.util.errors import TemporaryError
from alwayson.util.replication import slot_name

BACKENDS_GONE_TIMEOUT = 5.0


async def keep_primary(st: Tender) -> str | None:
    """Read the primary's standbys and positions; None when it answered, else why not."""
    try:
        rows = await st.observer.query(
            "SELECT application_name, state, sync_state, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint, "
            "extract(epoch FROM replay_lag)::float8, pg_current_wal_lsn()::text "
            "FROM pg_stat_replication",
            timeout=2,
        )
        current = await st.observer.query(
            "SELECT pg_current_wal_lsn()::text, "
            "(SELECT timeline_id FROM pg_control_checkpoint()), "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
            "(SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database)::bigint",
            timeout=2,
        )
    except TemporaryError as exc:
        st.last_error = str(exc)
        return f"primary not answering: {exc}"
    lsn, timeline, connections, xacts = current[0]
    # connections and xact_total feed the controller's alwayson_db_* metrics.
    st.facts = {
        "lsn": lsn,
        "timeline": timeline,
        "connections": int(connections or 0),
        "xact_total": int(xacts or 0),
    }
    st.replication = [
        {
            "standby": r[0],
            "state": r[1],
            "sync_state": r[2],
            "lag_bytes": r[3] or 0,
            "flush_lag_bytes": r[4] or 0,
            "lag_seconds": r[5] or 0.0,
        }
        for r in rows
    ]
    if st.synchronous:
        await keep_synchronous(st)
    return None


def sync_view(st: Tender) -> SyncView:
    return SyncView(
        standby_slots=tuple((s, slot_name(s)) for s in st.cfg.standby_sites),
        rows=tuple(
            StandbyRow(r["standby"], r["state"], r["sync_state"], r["flush_lag_bytes"])
            for r in st.replication
        ),
        sync_names=tuple(st.sync_names),
        sync_standby=st.sync_standby,
        alerted=bool(st.alert),
        missing_since=st.standby_missing_since,
        now=st.clock.monotonic(),
        block_on_loss=st.cfg.on_standby_loss == "block",
        standby_timeout=st.cfg.standby_timeout,
    )


async def keep_synchronous(st: Tender) -> None:
    decision = decide_sync(sync_view(st))
    st.standby_missing_since = decision.missing_since
    await _sync_step(st, decision.step, decision)


async def _sync_step(st: Tender, step: SyncStep, decision: SyncDecision) -> None:
    if step is SyncStep.NAME_STANDBY:
        assert decision.slot is not None
        st.write_conf([decision.slot], None)
        await st.reload_conf()
    elif step is SyncStep.RECORD_SYNC_STANDBY:
        st.sync_standby = decision.site
        await st.renew_now()
        await _sync_step(st, decision.then, decision)
    elif step is SyncStep.CLEAR_ALERT:
        assert decision.site is not None
        await clear_alert(st, decision.site)
    elif step is SyncStep.ALERT_BLOCKED:
        st.alert_kind = "blocked"
        st.alert = (
            f"commits to {st.name} on {st.cfg.site} are blocked: the synchronous "
            "standby is lost and on_standby_loss is block"
        )
        await st.event("db-writes-blocked", st.alert)
    elif step is SyncStep.WITHDRAW_STANDBY:
        # The lease must stop naming a standby before commits may go without it.
        st.sync_standby = None
        if await st.renew_now():
            await _sync_step(st, decision.then, decision)
    elif step is SyncStep.DEGRADE:
        st.write_conf([], None)
        await st.reload_conf()
        st.alert_kind = "rpo"
        st.alert = (
            f"RPO=0 no longer holds for {st.name}: the standby is lost; commits "
            f"continue on {st.cfg.site} alone"
        )
        await st.event("db-rpo-alert", st.alert)


async def clear_alert(st: Tender, site: str) -> None:
    if st.alert_kind == "blocked":
        await st.event("db-writes-resumed", f"{st.name}: {site} is back; blocked commits go on")
    else:
        await st.event("db-rpo-restored", f"{st.name}: {site} is synchronous again; RPO=0 holds")
    st.alert = None
    st.alert_kind = None


async def primary_exited(st: Tender, why: str) -> str:
    """The postmaster is gone: wait until no backend can commit, then release the lease
    so the standby need not wait for the ttl."""
    st.writable = False
    exited = st.exit_seen_at or st.clock.wall()
    tenure = st.tenure
    st.tenure = None
    st.role = Role.FENCED
    st.fence_reason = why
    noticed = st.clock.wall()
    await wait_backends_gone(st.data, BACKENDS_GONE_TIMEOUT, st.clock)
    gone = st.clock.wall()
    released = tenure is not None and await st.release(
        tenure.epoch, f"primary process exited at {exited:.3f}", exited
    )
    st.retake_after = st.clock.monotonic() + 2 * st.cfg.ttl
    await st.event("db-primary-exited", f"{st.cfg.site}: primary exited; lease released")
    if tenure is not None:
        st.find_end_of_wal(tenure.epoch)
    return (
        f"primary exited (seen by the cycle {noticed - exited:.2f}s later, every backend "
        f"gone {gone - exited:.2f}s after the exit)"
        + (", lease released for the standby" if released else "")
    )
