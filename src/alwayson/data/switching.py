"""What moves the primary or brings an old one back: switchover (and failback, a
switchover back to the spec's primary site), and the automatic rejoin of a fenced former
primary as a standby."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

from alwayson.data.deciding import Role
from alwayson.data.engines import EngineError, query, tool_conninfo
from alwayson.data.layout import SUPERUSER
from alwayson.data.lsns import lsn_int, lsn_text
from alwayson.data.starting import clone_from
from alwayson.data.tending import Tender
from alwayson.util.errors import AlwaysonError, TemporaryError
from alwayson.util.replication import slot_name

SWITCHOVER_WAIT = 30.0
REPLAY_POLL = 0.05
HANDOVER_DEADLINE = 2.0
FAILBACK_SETTLE = 30.0


def check_switchover(st: Tender, to: str) -> None:
    """Refuse, changing nothing, a switchover to a site that is not streaming or too far
    behind."""
    if to not in st.cfg.peers:
        raise AlwaysonError(f"{to!r} has no standby of {st.name}")
    row = next((r for r in st.replication if r["standby"] == slot_name(to)), None)
    if row is None or row["state"] != "streaming":
        raise AlwaysonError(f"{to} is not streaming from {st.cfg.site}; nothing was changed")
    if row["lag_bytes"] > st.cfg.switchover_max_lag:
        raise AlwaysonError(
            f"{to} is {row['lag_bytes']} bytes behind (switchover_max_lag "
            f"{st.cfg.switchover_max_lag}); wait for it to catch up; nothing was changed"
        )


async def switchover(
    st: Tender, to: str, report: Callable[[], Awaitable[None]], cycle: float
) -> dict[str, Any]:
    """Hold new writes, stop cleanly, wait until ``to`` replayed everything, hand the
    lease over and follow it: zero acknowledged writes lost by construction."""
    check_switchover(st, to)
    tenure = st.tenure
    pm = st.postmaster
    assert tenure is not None and pm is not None
    began = st.clock.wall()
    st.holding = True
    st.writable = False
    st.role = Role.SWITCHING
    try:
        # Tell the other site first: its endpoint stops sending new clients here on
        # its next view refresh, instead of into a PostgreSQL that is shutting down.
        await report()
        await st.clock.sleep(cycle + 0.05)
        await pm.stop("fast", timeout=20)
        control = await st.engine.controldata(st.data)
        final = lsn_int(control.get("Latest checkpoint location"))
        deadline = st.clock.monotonic() + SWITCHOVER_WAIT
        replayed = 0
        while st.clock.monotonic() < deadline:
            with contextlib.suppress(TemporaryError):
                rows = await query(
                    st.admin_dsn(st.cfg.peers[to]),
                    "SELECT pg_last_wal_replay_lsn()::text",
                    timeout=2,
                )
                replayed = lsn_int(rows[0][0])
                if replayed >= final:
                    break
            await st.clock.sleep(REPLAY_POLL)
        if replayed < final:
            await st.start(st.sync_names)
            await st.wait_ready()
            st.role = Role.PRIMARY
            st.writable = True
            raise AlwaysonError(
                f"{to} did not replay up to {final:X} within {SWITCHOVER_WAIT:.0f}s; "
                f"{st.cfg.site} stays primary"
            )
        await st.board.lease(
            st.name,
            "handover",
            st.cfg.site,
            tenure.epoch,
            st.cfg.ttl,
            HANDOVER_DEADLINE,
            to=to,
            fault_at=began,
        )
        st.tenure = None
        handed = st.clock.wall()
        await st.start_standby(to)
        st.role = Role.STANDBY
        return {
            "from": st.cfg.site,
            "to": to,
            "epoch": tenure.epoch + 1,
            "stopped_at": began,
            "handed_at": handed,
            "final_lsn": lsn_text(final),
            "standby_replayed_lsn": lsn_text(replayed),
            "lost_writes": 0,
        }
    finally:
        st.holding = False


async def rejoin(st: Tender) -> dict[str, Any]:
    """Rejoin a fenced former primary as a standby: pg_rewind, else a fresh clone. On
    failure the site is fenced again (the next attempt comes from the decisions)."""
    lease = st.lease
    holder = lease.holder if lease else None
    if holder is None or holder == st.cfg.site:
        raise AlwaysonError("no other site is primary; nothing to rejoin")
    st.role = Role.REJOINING
    try:
        return await _rejoin(st, holder, lease.epoch if lease else None)
    except BaseException:
        st.role = Role.FENCED
        raise


async def _rejoin(st: Tender, holder: str, epoch: int | None) -> dict[str, Any]:
    await st.settle(wait=FAILBACK_SETTLE)  # the end of this site's WAL, for the record
    # No password on pg_rewind's command line (any process may read /proc/<pid>/cmdline):
    # the engine's PGPASSFILE gives it.
    source = tool_conninfo(st.cfg.peers[holder], SUPERUSER)
    began = st.clock.wall()
    method = "rewind"
    output = ""
    try:
        output = await st.engine.run(
            "pg_rewind",
            "--target-pgdata",
            str(st.data),
            "--source-server",
            source,
            "--no-sync",
            timeout=600,
        )
    except EngineError as exc:
        method = f"re-clone (pg_rewind failed: {str(exc)[:200]})"
        await clone_from(st, holder)
    else:
        if await diverged_after_rewind(st, holder):
            method = "re-clone (both sites wrote on the same timeline; rewind cannot tell)"
            await clone_from(st, holder)
        else:
            await st.start_standby(holder)
    st.role = Role.STANDBY
    st.fence_reason = ""
    # "servers diverged at WAL location 0/3000148 on timeline 1"
    found = re.search(r"diverged at WAL location ([0-9A-F]+/[0-9A-F]+)", output)
    diverged = found.group(1) if found else None
    # final_wal stays in this site's reports until its next tenure: the new primary
    # completes its failover record from it, and a rejoin (pg_rewind of a small
    # database) can finish before any report carried it.
    end = (st.final_wal or {}).get("lsn")
    return {
        "from": st.cfg.site,
        "method": method,
        "follows": holder,
        "epoch": epoch,
        "seconds": st.clock.wall() - began,
        "diverged_at": diverged,
        "own_wal_end": end,
        # What this site had written past the new primary's history and threw away.
        "discarded_wal_bytes": (
            max(0, lsn_int(end) - lsn_int(diverged)) if diverged and end else None
        ),
    }


async def diverged_after_rewind(st: Tender, holder: str) -> bool:
    """pg_rewind compares timelines only: when the new primary was promoted before it
    learnt the old one's newest timeline, both chose the same id and rewind sees
    nothing to do although this copy has WAL the new primary never had."""
    control = await st.engine.controldata(st.data)
    mine = lsn_int(control.get("Latest checkpoint location"))
    tli = int(control.get("Latest checkpoint's TimeLineID", "0") or 0)
    rows = await query(
        st.admin_dsn(st.cfg.peers[holder]),
        "SELECT pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint())",
    )
    theirs, their_tli = lsn_int(rows[0][0]), int(rows[0][1])
    return tli >= their_tli and mine > theirs
