"""Instances: start, stop (after draining), replace by socket handover, and what their
runtime events mean (crash backoff, start failures, health).

``InstanceOps`` owns the bookkeeping of those acts (who is being stopped or drained, crash
records, start failures). It reaches the rest of the platform only through ports: the
``Runtime``, an event sink, a waker, a spawner and a route publisher. What it wants from
other parts it returns as intents.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alwayson.control.backoff import CrashRecord
from alwayson.control.desired import frontdoor_id, gateway_id, listen_addresses, takeover_args
from alwayson.control.ports import EventSink, Publisher, Spawner, Waker
from alwayson.control.reconciling import Start
from alwayson.control.state import PlatformState
from alwayson.runtime.base import (
    EventKind,
    InstanceSpec,
    InstanceStatus,
    Kind,
    Phase,
    Runtime,
    RuntimeEvent,
)
from alwayson.util.addresses import port_is_free, split_hostport
from alwayson.util.clocks import Clock
from alwayson.util.errors import ConflictError, NotFoundError, PermanentError, TemporaryError

log = logging.getLogger("alwayson.controller")

STOP_ORDER = (
    Kind.FRONTDOOR,
    Kind.GATEWAY,
    Kind.WORKLOAD,
    Kind.AGENT,
    Kind.CONTROLLER,
    Kind.ETCD,
)
"""Traffic first, the consensus last: the agents and the other controllers still reach
etcd while they stop."""
DOWN_GRACE = {Kind.ETCD: 1.0}
"""``down`` stops every etcd member at once: a leader's attempt to hand its leadership over
to members that are stopping too only runs into etcd's own timeout (7 s), so it is given a
second; etcd's WAL makes a kill safe."""
START_ORDER = tuple(reversed(STOP_ORDER))
"""The etcd members are launched before the agents that keep their leases on them."""
DRAIN_PUSH_DEADLINE = 5.0
DRAIN_RETRY = 0.1
REPLACE_READY_DEADLINE = 20.0


@dataclass(frozen=True)
class CandidateFailed:
    """An instance of a release's candidate failed: the release judges it."""

    service: str
    at: float
    text: str


@dataclass(frozen=True)
class InstanceGone:
    """An instance exited on its own: scrape now, alerts should know."""

    instance_id: str


Intent = CandidateFailed | InstanceGone


class InstanceOps:
    def __init__(
        self,
        runtime: Runtime,
        clock: Clock,
        events: EventSink,
        waker: Waker,
        spawner: Spawner,
        publisher: Publisher,
        before_start: Callable[[InstanceSpec], Awaitable[InstanceSpec]] | None = None,
        address_free: Callable[[str, int], bool] = port_is_free,
        itself: str | None = None,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.runtime = runtime
        self.itself = itself
        self.may_act = may_act
        """False once this controller no longer leads: it then starts and stops nothing."""
        """The instance this controller runs as (``controller@<site>``): never stopped here."""
        self.clock = clock
        self.events = events
        self.waker = waker
        self.spawner = spawner
        self.publisher = publisher
        self.before_start = before_start
        self.address_free = address_free
        self.crashes: dict[str, CrashRecord] = {}
        self.start_failures: dict[str, str] = {}
        self.stopping: set[str] = set()
        self.draining: set[str] = set()

    def forget_crashes_except(self, keep: Iterable[str]) -> None:
        """A new spec: forget start failures, and crash records of what no longer runs."""
        kept = set(keep)
        self.start_failures.clear()
        for ident in [i for i in self.crashes if i not in kept]:
            del self.crashes[ident]

    def blocked_until(self) -> dict[str, float]:
        return {k: c.next_start_at for k, c in self.crashes.items()}

    def crash_reasons(self) -> dict[str, str]:
        return {
            k: f"{c.last_reason}; backoff {c.delay:g}s"
            for k, c in self.crashes.items()
            if c.failures
        }

    # ------------------------------------------------------------ acts

    async def start_all(self, starts: Sequence[Start]) -> None:
        """Start kind by kind in ``START_ORDER``, each kind's processes at once: a kind is
        launched only after the kinds it needs (the agents after the etcd members)."""
        rank = {kind: i for i, kind in enumerate(START_ORDER)}
        steps = [rank.get(s.spec.kind, len(rank)) for s in starts]
        for step in sorted(set(steps)):
            tier = [s for s, at in zip(starts, steps, strict=True) if at == step]
            await asyncio.gather(*(self.start(s.spec, s.reason) for s in tier))

    async def start(self, spec: InstanceSpec, reason: str) -> None:
        if not self.may_act():
            log.warning("not starting %s: this controller no longer leads", spec.id)
            return
        try:
            if spec.kind is Kind.WORKLOAD and not self.address_free(spec.host, spec.port):
                raise PermanentError(
                    f"{spec.id}: address {spec.host}:{spec.port} is in use by another process "
                    f"(service {spec.service}, port {spec.port})"
                )
            if spec.kind is Kind.ETCD:
                taken = [
                    a for a in listen_addresses(spec) if not self.address_free(*split_hostport(a))
                ]
                if taken:
                    raise PermanentError(
                        f"{spec.id}: address {', '.join(taken)} is in use by another process "
                        f"(the etcd member of site {spec.site})"
                    )
            if self.before_start is not None:
                spec = await self.before_start(spec)
            status = await self.runtime.start(spec)
        except PermanentError as exc:
            record = self.crashes.setdefault(spec.id, CrashRecord())
            delay = record.crashed(self.clock.monotonic(), str(exc), None, 0.0)
            self.start_failures[spec.id] = str(exc)
            log.error("cannot start %s: %s (retry in %.1fs)", spec.id, exc, delay)
            await self.events.record_event("start-failed", spec.id, str(exc))
            return
        log.debug("started %s pid %d (%s)", spec.id, status.pid, reason)

    async def stop(
        self, ident: str, reason: str, drain: bool = True, grace: float | None = None
    ) -> None:
        """Take the process out of every routing table first, then SIGTERM it (drain);
        SIGKILL after ``grace`` (default: its spec's ``stop_grace``)."""
        if ident == self.itself or not self.may_act():
            self.stopping.discard(ident)
            return
        try:
            if drain:
                await self.drain(ident)
            await self.runtime.stop(ident, grace)
            await self.events.record_event("stopped", ident, reason)
        except NotFoundError:
            pass
        finally:
            self.stopping.discard(ident)
            self.draining.discard(ident)
            self.publisher.forget(ident)
            self.waker.wake()

    def begin_stop(self, ident: str, reason: str, successor: InstanceSpec | None) -> None:
        """Stop ``ident`` in the background: by handover to ``successor``, or drained."""
        self.stopping.add(ident)
        if successor is not None:
            self.spawner.spawn(self.replace(successor, reason))
        else:
            self.spawner.spawn(self.stop(ident, reason))

    def can_hand_over(self, new: InstanceSpec | None, old: InstanceStatus | None) -> bool:
        """A gateway whose addresses stay the same is replaced by socket handover."""
        return (
            new is not None
            and old is not None
            and new.kind in (Kind.GATEWAY, Kind.FRONTDOOR)
            and listen_addresses(new) == listen_addresses(old.spec)
        )

    async def replace(self, spec: InstanceSpec, reason: str) -> dict[str, Any]:
        """Start a successor that takes the listening sockets over; the old one drains."""
        if not self.may_act():
            raise ConflictError(f"not replacing {spec.id}: this controller no longer leads")
        old = _status(self.runtime, spec.id)
        started = self.clock.monotonic()
        self.stopping.add(spec.id)
        try:
            new = await self.runtime.replace(spec, takeover_args(spec))
            await self.events.record_event(
                "replaced", spec.id, f"{reason}: pid {old.pid if old else '-'} → {new.pid}"
            )
        finally:
            self.stopping.discard(spec.id)
            self.publisher.forget(spec.id)
            self.waker.wake()
        deadline = self.clock.monotonic() + REPLACE_READY_DEADLINE
        while not new.ready and new.phase is not Phase.EXITED:
            if self.clock.monotonic() > deadline:
                raise TemporaryError(f"{spec.id}: the new process (pid {new.pid}) is not ready")
            await self.clock.sleep(DRAIN_RETRY)
        return {
            "id": spec.id,
            "old_pid": old.pid if old else None,
            "new_pid": new.pid,
            "seconds": round(self.clock.monotonic() - started, 3),
        }

    async def replace_components(
        self, sites: list[str], desired: Mapping[str, InstanceSpec], reason: str
    ) -> list[dict[str, Any]]:
        """Site by site, the gateway then the front door, each ready before the next."""
        results = []
        for name in sites:
            for ident in (gateway_id(name), frontdoor_id(name)):
                if ident in self.stopping:
                    raise ConflictError(f"{ident} is already being stopped or replaced")
                results.append(await self.replace(desired[ident], reason))
        return results

    async def upgrade_sites(
        self, sites: list[str], desired: Mapping[str, InstanceSpec]
    ) -> list[dict[str, Any]]:
        """Replace each site's gateway and front door, one site after the other."""
        replaced = []
        for name in sites:
            replaced += await self.replace_components([name], desired, "upgrade")
            await self.events.record_event("upgraded", f"gateway@{name}", f"site {name} upgraded")
        return replaced

    async def drain(self, ident: str) -> None:
        """Wait until every ready gateway has a table without ``ident`` (bounded)."""
        self.draining.add(ident)
        deadline = self.clock.monotonic() + DRAIN_PUSH_DEADLINE
        while True:
            await self.publisher.publish()
            if not self.publisher.still_routed(ident):
                return
            if self.clock.monotonic() > deadline:
                log.warning("%s: not every gateway confirmed its removal; stopping anyway", ident)
                return
            await self.clock.sleep(DRAIN_RETRY)

    async def stop_everything(self) -> int:
        """Front doors, then gateways, workloads, agents and the etcd members; returns how
        many."""
        statuses = [
            s
            for s in self.runtime.statuses()
            if s.phase is not Phase.EXITED and s.spec.id != self.itself
        ]
        for kind in STOP_ORDER:
            tier = [s.spec.id for s in statuses if s.spec.kind is kind]
            self.stopping.update(tier)
            grace = DOWN_GRACE.get(kind)
            await asyncio.gather(*(self.stop(i, "down", drain=False, grace=grace) for i in tier))
        return len(statuses)

    # ------------------------------------------------------------ events

    async def handle(self, event: RuntimeEvent, state: PlatformState) -> list[Intent]:
        """Book one runtime event; returns what other parts should hear of it."""
        kind, ident, detail = event.kind, event.instance_id, event.detail
        now = self.clock.monotonic()
        intents: list[Intent] = []
        failed = kind in (EventKind.UNHEALTHY, EventKind.START_TIMEOUT) or (
            kind is EventKind.EXITED and not event.data.get("expected")
        )
        inst = state.desired.get(ident)
        if failed and inst is not None and inst.kind is Kind.WORKLOAD:
            running = state.running_release(inst.service)
            if running is not None and inst.version == running.candidate.label:
                text = f"{ident} {kind.value}: {detail}"
                intents.append(CandidateFailed(inst.service, self.clock.wall(), text))
        if kind is EventKind.EXITED:
            expected = bool(event.data.get("expected"))
            status = _status(self.runtime, ident)
            self.publisher.forget(ident)
            if not expected and ident in state.desired:
                ran_for = self.clock.wall() - status.started_at if status else 0.0
                record = self.crashes.setdefault(ident, CrashRecord())
                delay = record.crashed(now, detail, event.exit_code, ran_for)
                log.warning("%s %s; restarting in %.1fs", ident, detail, delay)
                await self.events.record_event(
                    "crashed", ident, f"{detail}; restart in {delay:.1f}s"
                )
            if not expected:
                self.runtime.forget(ident)
                intents.append(InstanceGone(ident))
        elif kind in (EventKind.UNHEALTHY, EventKind.START_TIMEOUT):
            record = self.crashes.setdefault(ident, CrashRecord())
            delay = record.crashed(now, detail, None, 0.0)
            if kind is EventKind.START_TIMEOUT:
                self.start_failures[ident] = detail
            log.warning("%s: %s; restarting in %.1fs", ident, detail, delay)
            await self.events.record_event(kind.value, ident, detail)
            if ident not in self.stopping:
                self.begin_stop(ident, detail, None)
        elif kind is EventKind.READY:
            self.start_failures.pop(ident, None)
            self.publisher.forget(ident)
        self.waker.wake()
        return intents


def _status(runtime: Runtime, ident: str) -> InstanceStatus | None:
    return next((s for s in runtime.statuses() if s.spec.id == ident), None)
