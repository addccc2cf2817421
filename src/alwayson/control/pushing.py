"""Routing tables for gateways and front doors: built from a snapshot, pushed, remembered.

``RouteBook`` knows which table each gateway and front door confirmed last (``pushed``),
pushes only what changed, writes the first table of a process that is about to start (it
reads it from disk before it listens), and answers whether an instance is still routed
anywhere (the drain that precedes every intentional stop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import httpx

from alwayson.control.routing import Table, frontdoor_table, same_table, site_table
from alwayson.control.state import PlatformState
from alwayson.runtime.base import InstanceSpec, InstanceStatus, Kind
from alwayson.util.certs import web_context
from alwayson.util.clocks import Clock
from alwayson.util.errors import TemporaryError

log = logging.getLogger("alwayson.controller")

Tables = dict[str, tuple[InstanceStatus | None, InstanceSpec, Table]]


class TablePusher(Protocol):
    async def push(self, admin: str, table: Table) -> None: ...

    async def close(self) -> None: ...


class RoutePusher:
    """Pushes tables to gateway admin endpoints over HTTP (bearer token)."""

    def __init__(self, token: str, timeout: float = 2.0) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            verify=web_context(),
        )

    async def push(self, admin: str, table: Table) -> None:
        try:
            response = await self._client.put(f"http://{admin}/routes", json=table)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"gateway {admin}: {exc!r}", retry_after=0.5) from exc
        if response.status_code == 409:
            return
        if response.status_code != 200:
            raise TemporaryError(
                f"gateway {admin} refused routes: HTTP {response.status_code} {response.text[:200]}"
            )

    async def close(self) -> None:
        await self._client.aclose()


def write_table(path: Path, table: Table) -> None:
    """Atomically write a table where a gateway reads it when it starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)


def build_tables(state: PlatformState) -> Tables:
    """The table every desired gateway and front door should have now (pure)."""
    spec = state.spec
    if spec is None:
        return {}
    by_id = {s.spec.id: s for s in state.statuses}
    routable = [s for s in state.statuses if s.spec.id not in state.draining]
    out: Tables = {}
    for ident, inst in state.desired.items():
        if inst.kind is Kind.GATEWAY:
            table = site_table(spec, inst.site, routable, dict(state.splits))
        elif inst.kind is Kind.FRONTDOOR:
            table = frontdoor_table(spec, inst.site, routable)
        else:
            continue
        out[ident] = (by_id.get(ident), inst, table)
    return out


def routes_file(inst: InstanceSpec) -> Path:
    return Path(inst.argv[inst.argv.index("--routes-file") + 1])


class RouteBook:
    def __init__(self, pusher: TablePusher, clock: Clock) -> None:
        self.pusher = pusher
        self.clock = clock
        self.pushed: dict[str, Table] = {}
        self.generation = 0

    def _next_generation(self) -> int:
        self.generation = max(self.generation + 1, int(self.clock.wall() * 1000))
        return self.generation

    def forget(self, instance_id: str) -> None:
        """``instance_id``'s process changed: its next table is pushed whatever it holds."""
        self.pushed.pop(instance_id, None)

    def write_initial(self, state: PlatformState, starting: Iterable[InstanceSpec]) -> None:
        """Write the first table of each gateway or front door about to start."""
        tables = build_tables(state)
        for spec in starting:
            if spec.id in tables:
                _, inst, table = tables[spec.id]
                table = dict(table, generation=self._next_generation())
                write_table(routes_file(inst), table)
                self.pushed[inst.id] = table

    async def push(self, state: PlatformState) -> None:
        """Push each ready gateway and front door the table it lacks, all at once."""
        pushes = []
        for ident, (status, inst, table) in build_tables(state).items():
            if status is None or not status.ready or same_table(self.pushed.get(ident), table):
                continue
            table = dict(table, generation=self._next_generation())
            pushes.append(self._push_one(ident, inst, table))
        await asyncio.gather(*pushes)

    async def _push_one(self, ident: str, inst: InstanceSpec, table: Table) -> None:
        try:
            await self.pusher.push(f"{inst.host}:{inst.port}", table)
        except TemporaryError as exc:
            log.warning("routes not pushed to %s: %s", ident, exc)
            return
        self.pushed[ident] = table

    def still_routed(self, instance_id: str, statuses: Iterable[InstanceStatus]) -> bool:
        """Whether a ready gateway or front door may still send ``instance_id`` traffic."""
        for status in statuses:
            if status.spec.kind not in (Kind.GATEWAY, Kind.FRONTDOOR) or not status.ready:
                continue
            table = self.pushed.get(status.spec.id)
            if table is None:
                return True
            for route in table["routes"]:
                if any(b["id"] == instance_id for b in route["backends"]):
                    return True
        return False

    async def close(self) -> None:
        await self.pusher.close()
