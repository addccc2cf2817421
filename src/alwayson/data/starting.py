"""Acts that give a site its PostgreSQL: initialise, clone, take the lease back."""

from __future__ import annotations

import asyncio
import shutil

from psycopg import sql

from alwayson.data.deciding import Role
from alwayson.data.engines import query
from alwayson.data.layout import SUPERUSER
from alwayson.data.leases import LeaseRefused
from alwayson.data.settings import HBA, INCLUDE_LINE
from alwayson.data.tending import Tender

ACQUIRE_DEADLINE = 1.5
FIRST_ACQUIRE_DEADLINE = 2.0


async def initialise(st: Tender) -> str:
    root = st.data.parent
    root.mkdir(parents=True, exist_ok=True)
    st.engine.ident.check_reachable(root)
    await asyncio.to_thread(shutil.rmtree, st.data, True)  # other databases renew meanwhile
    await st.engine.initdb(st.data, SUPERUSER)
    st.prepare_repo()
    with (st.data / "postgresql.conf").open("a") as conf:
        conf.write(INCLUDE_LINE)
    st.engine.write_file(st.data / "pg_hba.conf", HBA)
    lease, sent = await st.acquire(FIRST_ACQUIRE_DEADLINE)
    st.hold(lease, sent)
    await st.start(sync_names=[])
    await st.wait_ready()
    await st.ensure_slots()
    await create_app_objects(st)
    st.role = Role.PRIMARY
    st.writable = True
    await st.event("db-initialised", f"{st.cfg.site}: new primary at epoch {lease.epoch}")
    return f"initialised a new primary (lease epoch {lease.epoch})"


async def create_app_objects(st: Tender) -> None:
    name, pw = st.name, st.cfg.app_password
    rows = await query(st.admin_dsn(), "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    if not rows:
        await query(
            st.admin_dsn(),
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(pw)
            ),
        )
    rows = await query(st.admin_dsn(), "SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    if not rows:
        await query(
            st.admin_dsn(),
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(name)
            ),
        )


async def clone_from(st: Tender, holder: str) -> str:
    if not st.partitions.connected(st.cfg.site, holder):
        return f"cannot reach {holder} to clone the standby"
    await st.settle()
    root = st.data.parent
    root.mkdir(parents=True, exist_ok=True)
    st.engine.ident.check_reachable(root)
    await asyncio.to_thread(shutil.rmtree, st.data, True)  # other databases renew meanwhile
    st.engine.ident.own(st.data)
    st.prepare_repo()
    source = st.cfg.peers[holder]
    host, _, port = source.rpartition(":")
    await st.engine.run(
        "pg_basebackup",
        "-D",
        str(st.data),
        "-h",
        host,
        "-p",
        port,
        "-U",
        SUPERUSER,
        "-X",
        "stream",
        "--checkpoint=fast",
        "--no-manifest",
        timeout=600,
    )
    await st.start_standby(holder)
    st.role = Role.STANDBY
    return f"cloned a standby from {holder} with pg_basebackup"


async def become_primary_again(st: Tender, why: str) -> str:
    try:
        lease, sent = await st.acquire(ACQUIRE_DEADLINE)
    except LeaseRefused as exc:
        st.role = Role.FENCED
        return f"cannot take the lease back: {exc.reason}"
    st.hold(lease, sent)
    await st.start(sync_names=[])
    await st.wait_ready()
    # A data folder whose first start failed (or one cloned from a standby) may lack the
    # standby's slot: without it the standby can never stream from this primary again.
    await st.ensure_slots()
    st.role = Role.PRIMARY
    st.writable = True
    st.fence_reason = ""
    return f"{why}: primary again at lease epoch {lease.epoch}"
