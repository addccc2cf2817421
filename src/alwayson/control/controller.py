"""The controller: holds the desired state, drives reconcile turns, answers the API.

Each turn: build one frozen ``PlatformState`` → decide (``reconciling.decide``, pure) → act
(``InstanceOps`` stops, starts, replaces; ``RouteBook`` pushes tables) and end in one
verdict sentence, logged when it changes. The parts (instances, routes, releases,
databases, drills, observing) are given narrow ports (``control.ports``), not this object's
internals; what they want changed comes back as intents applied here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alwayson import __version__
from alwayson.control.applied import Applied
from alwayson.control.boards import EtcdBoards
from alwayson.control.consensus import (
    membership_of,
    recorded_membership,
    reshaping,
    start_member,
)
from alwayson.control.databases import DatabaseOps
from alwayson.control.desired import allocate_slots, desired_instances
from alwayson.control.drilling import DrillOps
from alwayson.control.instances import CandidateFailed, InstanceGone, InstanceOps, Intent
from alwayson.control.looping import Reconciler
from alwayson.control.observing import Observatory
from alwayson.control.ports import Boards
from alwayson.control.preflight import AddressCheck, UserCheck, preflight
from alwayson.control.pushing import RouteBook, TablePusher
from alwayson.control.releasing import ReleaseDriver
from alwayson.control.secrets import changes as secret_changes
from alwayson.control.secrets import resolve as resolve_secrets
from alwayson.control.secrets import save as save_secrets
from alwayson.control.state import PlatformState, frozen_statuses, only_site, replica_counts
from alwayson.control.statuses import status_view
from alwayson.control.waiting import TaskOwner
from alwayson.release.model import Release
from alwayson.runtime.base import InstanceSpec, Kind, Phase, Runtime
from alwayson.runtime.processes import Processes
from alwayson.spec.loading import load_spec_text
from alwayson.spec.models import MAX_REPLICAS, PlatformSpec
from alwayson.spec.planning import Change, Overrides, destructive, plan, refusal
from alwayson.store.base import AuditEntry, Event, StateStore
from alwayson.util.addresses import port_is_free
from alwayson.util.clocks import Clock
from alwayson.util.errors import (
    ConflictError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)

log = logging.getLogger("alwayson.controller")


@dataclass(frozen=True)
class ApplyResult:
    changes: list[Change]
    digest: str


def _anyone_can_run(user: str | None, argv0: str, cwd: str) -> str | None:
    return None


EVENTS_EVERY = 2.0
UNSENT_KEPT = 1000
"""How often the agents' events are moved from etcd into the controller's store (s)."""


class Controller:
    def __init__(
        self,
        store: StateStore,
        runtime: Runtime,
        processes: Processes,
        state_dir: Path,
        clock: Clock,
        pusher: TablePusher,
        default_user: str | None,
        interval: float = 1.0,
        can_run: UserCheck = _anyone_can_run,
        address_free: AddressCheck = port_is_free,
        boards: Boards | None = None,
        itself: str | None = None,
        may_act: Callable[[], bool] = lambda: True,
        unsent: list[Event] | None = None,
    ) -> None:
        self.store = store
        self.itself = itself
        self.downing = False
        self.only_one = False
        """The platform's only controller (``api.daemon``): it refuses a spec that needs a
        controller in every site, which ``alwayson up`` starts instead."""
        """``down`` is stopping everything, the etcd members last: it finishes although
        the leadership it held lapses when their majority is gone."""
        self.leader_view: Callable[[], dict[str, Any] | None] = lambda: None
        """Which controller leads and which ones there are (set by a site's controller)."""
        self.boards: Boards = boards or EtcdBoards(state_dir, clock)
        self._events_filed_at = float("-inf")
        self._unsent: list[Event] = unsent if unsent is not None else []
        """Events the store could not take yet. A site's controllers share one list across
        their terms: an event of a term that ended goes out when that site leads again."""
        self.runtime = runtime
        self.state_dir = state_dir
        self.clock = clock
        self.interval = interval
        self.can_run = can_run
        self.address_free = address_free
        self.applied = Applied(state_dir, default_user)
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._lock = asyncio.Lock()
        self.tasks = TaskOwner(self)
        self.routes = RouteBook(pusher, clock)
        self.instances = InstanceOps(
            runtime,
            clock,
            self,
            self,
            self.tasks,
            self,
            before_start=self._before_start,
            address_free=address_free,
            itself=itself,
            may_act=may_act,
        )
        self.databases = DatabaseOps(store, self.applied, clock, self.boards, state_dir)
        self.drills = DrillOps(
            store, self, self, self.applied, runtime, processes, state_dir, clock
        )
        self.drills.itself = itself
        self.observatory = Observatory(
            store,
            clock,
            self,
            runtime,
            self,
            self.tasks,
            self,
            self,
            self.databases,
            self.drills,
            state_dir,
        )
        self.releases = ReleaseDriver(store, clock, self, self, self, self, self.observatory)
        self.observed_view = self.observatory.observed_view
        self.loop = Reconciler(
            self,
            clock,
            runtime,
            self.instances,
            self.routes,
            self,
            self._apply,
            [self.releases.tick, self._file_events],
        )
        (state_dir / "run" / "handover").mkdir(parents=True, exist_ok=True)

    async def _file_events(self) -> None:
        """Every 2 s: the agents' events (filed on etcd) into this controller's store."""
        now = self.clock.monotonic()
        if now - self._events_filed_at < EVENTS_EVERY:
            return
        self._events_filed_at = now
        await self._send_unsent()
        await self.databases.file_events()

    # ------------------------------------------------------------ ports given to the parts

    async def _before_start(self, spec: InstanceSpec) -> InstanceSpec:
        """Files a process needs; an etcd member that lost its data rejoins (consensus)."""
        self.applied.prepare_start(spec)
        if spec.kind is not Kind.ETCD or self.applied.loaded is None:
            return spec
        platform = self.applied.loaded.spec
        spec, done = await start_member(spec, platform, self.state_dir, self.boards.cluster)
        if done:
            await self.record_event("etcd-member-rejoined", spec.id, done)
        return spec

    def wake(self) -> None:
        self._wake.set()

    async def record_event(
        self, kind: str, subject: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        event = Event(self.clock.wall(), kind, subject, message, data or {})
        try:
            await self.store.append_event(event)
        except TemporaryError as exc:  # etcd electing a leader: the act goes on regardless
            if len(self._unsent) < UNSENT_KEPT:
                self._unsent.append(event)
            log.warning("event kept to send again (%s %s): %s", kind, subject, exc)

    async def _send_unsent(self) -> None:
        """Events the store could not take when they happened, in order, as soon as it can."""
        while self._unsent:
            await self.store.append_event(self._unsent[0])
            self._unsent.pop(0)

    def spec_or_none(self) -> PlatformSpec | None:
        return self.applied.spec_or_none()

    def spec(self) -> PlatformSpec:
        return self.applied.spec()

    def spec_folder(self) -> Path:
        return self.applied.spec_folder()

    async def publish(self) -> None:
        await self.routes.push(self.state())

    def still_routed(self, instance_id: str) -> bool:
        return self.routes.still_routed(instance_id, self.runtime.statuses())

    def forget(self, instance_id: str) -> None:
        self.routes.forget(instance_id)

    # ------------------------------------------------------------ the snapshot

    def counts(self) -> Overrides:
        return self.applied.counts()

    def desired(self) -> dict[str, InstanceSpec]:
        """What should run (cached by ``Applied`` until something it depends on changes)."""
        releases = self.releases
        desired = self.applied.desired(
            releases.variants, releases.cache_key(), self.drills.sites_down
        )
        if self.itself in desired:  # it runs as it was started: never replaced by itself
            try:
                running = self.runtime.status(self.itself).spec
            except NotFoundError:
                return desired
            if running != desired[self.itself]:
                return {**desired, self.itself: running}
        return desired

    def state(self) -> PlatformState:
        """The platform as of now, frozen: what one turn (or one API view) decides from."""
        return PlatformState(
            now=self.clock.monotonic(),
            loaded=self.applied.loaded,
            overrides=dict(self.applied.overrides),
            autoscaled=dict(self.applied.autoscaled),
            counts=self.counts(),
            splits=self.releases.splits(),
            versions=dict(self.releases.versions),
            releases=dict(self.releases.active),
            sites_down=frozenset(self.drills.sites_down),
            desired=self.desired(),
            statuses=frozen_statuses(self.runtime.statuses()),
            pushed=dict(self.routes.pushed),
            stopping=frozenset(self.instances.stopping),
            draining=frozenset(self.instances.draining),
        )

    # ------------------------------------------------------------ desired state

    async def load(self) -> None:
        await self.observatory.load()
        await self.drills.load()
        releases = await self.applied.load(self.store)
        if self.applied.loaded is not None:
            self.releases.load_state(releases)
            await self.releases.load()

    async def save_state(self) -> None:
        await self.applied.save(self.store, self.releases.dump_state(), self.clock.wall())

    async def plan(
        self, text: str, path: str, secrets: Mapping[str, str] | None = None
    ) -> list[Change]:
        # Parsed on a worker thread: a slow spec must not stall the loop's restarts.
        loaded = await asyncio.to_thread(load_spec_text, text, Path(path))
        current = self.spec_or_none()
        changes = plan(loaded.spec, current, self.applied.overrides, self.releases.versions)
        values = resolve_secrets(loaded.spec, loaded.folder, secrets or {}, self.state_dir)
        return changes + secret_changes(loaded.spec, values, self.state_dir)

    async def apply(
        self,
        text: str,
        path: str,
        actor: str,
        allow_destroy: bool = False,
        secrets: Mapping[str, str] | None = None,
    ) -> ApplyResult:
        """Validate everything first; only then replace the desired state (all or nothing).

        A destructive change (a database removed, its primary site or replication changed)
        is refused unless ``allow_destroy``: nothing changes, and the refusal lists them."""
        loaded = await asyncio.to_thread(load_spec_text, text, Path(path))  # off the loop
        if loaded.spec.has_consensus and self.only_one:
            raise PermanentError(
                f"{loaded.path}: databases: a platform with databases runs a controller in "
                "every site, on etcd; this controller is the platform's only one. Run "
                "`alwayson up` with this spec: it starts etcd and the site controllers, hands "
                "this controller's state to them and applies the spec. Nothing was changed."
            )
        async with self._lock:
            applied = self.applied
            current = applied.spec_or_none()
            changes = plan(loaded.spec, current, applied.overrides, self.releases.versions)
            values = resolve_secrets(loaded.spec, loaded.folder, secrets or {}, self.state_dir)
            rotated = secret_changes(loaded.spec, values, self.state_dir)
            changes += rotated
            if destructive(changes) and not allow_destroy:
                raise ConflictError(refusal(destructive(changes)))
            slots = allocate_slots(loaded.spec, applied.slots)
            counts = replica_counts(loaded.spec, {}, applied.autoscaled)  # the file ends drift
            releases = self.releases.for_apply(current, loaded, counts, actor)
            new = desired_instances(
                loaded.spec, counts, applied.context(loaded, slots, secret_values=values)
            )
            running = [s for s in self.runtime.statuses() if s.phase is not Phase.EXITED]
            user = applied.user_of(loaded)
            reshaped = reshaping(
                recorded_membership(self.state_dir), membership_of(loaded.spec, self.state_dir)
            )
            preflight(
                loaded, new, running, user, self.can_run, self.address_free, reshaped=reshaped
            )
            save_secrets(self.state_dir, values)  # 0600; instances get copies at start
            if rotated:
                applied.secrets_version += 1
            # In one step (no await in between): the new spec and the releases it starts, so
            # no turn ever sees the new version without its release (it would replace the
            # old instances in place).
            applied.loaded, applied.slots, applied.overrides = loaded, slots, {}
            self.releases.versions = {}  # the file is the truth again: deploy drift ends
            for release in releases:
                self.releases.active[release.service] = release
            self.instances.forget_crashes_except(new)
            for release in releases:
                await self.releases.begin(release)
            await self.save_state()
            await self._audit(actor, "apply", {"spec": str(loaded.path), "changes": changes})
        self._wake.set()
        return ApplyResult(changes, loaded.digest)

    async def autoscale(self, service: str, site: str, replicas: int) -> None:
        """The autoscaler's decision; unlike ``scale`` it is not drift from the spec."""
        async with self._lock:
            before = self.state().desired_count(service, site)
            self.applied.autoscaled[(service, site)] = replicas
            await self.save_state()
        await self.record_event(
            "autoscaled", f"{service}@{site}", f"{before} -> {replicas} instances"
        )
        self._wake.set()

    async def scale(self, service: str, replicas: int, site: str | None, actor: str) -> str:
        spec = self.spec()
        if service not in {s.name for s in spec.services}:
            known = ", ".join(s.name for s in spec.services)
            raise NotFoundError(f"unknown service {service!r} (services: {known})")
        sites = [s.name for s in spec.workload_sites]
        if site is not None and site not in sites:
            raise NotFoundError(f"unknown workload site {site!r} (sites: {', '.join(sites)})")
        running = self.releases.running(service)
        if running is not None:
            raise ConflictError(
                f"{service} is being released ({running.summary()}); scale it when the "
                "release has ended"
            )
        if not 0 <= replicas <= MAX_REPLICAS:
            raise PermanentError("replicas must be between 0 and 100")
        async with self._lock:
            for name in [site] if site else sites:
                self.applied.overrides[(service, name)] = replicas
            await self.save_state()
            await self._audit(
                actor, "scale", {"service": service, "replicas": replicas, "site": site}
            )
        self._wake.set()
        where = site or "every workload site"
        return f"{service}: {replicas} replicas in {where} (drift from the spec until `apply`)"

    # ------------------------------------------------------------ releases

    async def deploy(
        self,
        service: str,
        version: str,
        run: str | None,
        strategy: str | None,
        settings: dict[str, Any] | None,
        actor: str,
    ) -> Release:
        """Start a release of ``service`` at ``version`` (drift from the spec until apply)."""
        spec = self.spec()
        async with self._lock:
            release = self.releases.for_deploy(
                spec, self.counts(), service, version, run, strategy, settings, actor
            )
            chosen = release.strategy
            detail = {"service": service, "version": version, "run": run, "strategy": chosen}
            await self._audit(actor, "deploy", detail)
            return await self.releases.begin(release)

    async def rollback(self, service: str, to: str | None, actor: str) -> Release:
        """Abort a running release, or release an earlier version again (rolling)."""
        spec = self.spec()
        if self.releases.running(service) is not None:
            if to is not None:
                raise ConflictError(
                    f"a release of {service} is running; `release abort {service}` first, "
                    "or roll back without --to"
                )
            await self._audit(actor, "release-rollback", {"service": service})
            return await self.releases.abort(service, actor)
        version, run = await self.releases.rollback_target(service, to)
        async with self._lock:
            release = self.releases.prepare(
                spec,
                self.counts(),
                service,
                version,
                run,
                "rollback",
                actor,
                f"alwayson release rollback by {actor}",
            )
            await self._audit(actor, "release-rollback", {"service": service, "to": version})
            return await self.releases.begin(release)

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Reconcile until ``shutdown``; every task started here is awaited here."""
        self.tasks.spawn(self.observatory.run())
        self.tasks.spawn(self.drills.run())
        try:
            await self.loop.run(self._wake, self._done, self.interval)
        finally:
            await self.tasks.close()
            await self.observatory.close()

    async def turn(self) -> str:
        return await self.loop.turn()

    @property
    def verdict(self) -> str:
        return self.loop.verdict

    def _apply(self, intent: Intent) -> None:
        if isinstance(intent, CandidateFailed):
            self.releases.note_failure(intent.service, intent.at, intent.text)
        elif isinstance(intent, InstanceGone):
            self.observatory.poke()

    async def _audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        safe = {k: [str(c) for c in v] if k == "changes" else v for k, v in detail.items()}
        if self.itself is not None:  # which site's controller led when it was done
            safe["leader"] = self.itself
        await self.store.append_audit(AuditEntry(self.clock.wall(), actor, action, safe))

    # ------------------------------------------------------------ gateways

    async def restart_gateways(self, site: str | None, actor: str) -> list[dict[str, Any]]:
        """Replace each site's gateway, then its front door, handing sockets over."""
        sites = only_site([s.name for s in self.spec().workload_sites], site)
        await self._audit(actor, "gateway-restart", {"site": site})
        return await self.instances.replace_components(sites, self.desired(), "restart requested")

    async def upgrade_gateways(self, site: str | None, actor: str) -> dict[str, Any]:
        """Replace the gateways and front doors site by site, the secondary site first.

        Each replacement hands the listening sockets over (no refused connection) and waits
        until the new process is ready before the next one starts."""
        spec = self.spec()
        sites = only_site([s.name for s in reversed(spec.workload_sites)], site)
        if any(self.releases.running(s.name) for s in spec.services):
            raise ConflictError("a service release is running; upgrade the gateways after it")
        started = self.clock.monotonic()
        await self._audit(actor, "upgrade-gateway", {"site": site})
        replaced = await self.instances.upgrade_sites(sites, self.desired())
        return {
            "version": __version__,
            "sites": sites,
            "replaced": replaced,
            "seconds": round(self.clock.monotonic() - started, 3),
        }

    # ------------------------------------------------------------ views and shutdown

    def status(self) -> dict[str, Any]:
        view = status_view(
            self.state(),
            verdict=self.loop.verdict,
            cycles=self.loop.cycles,
            crashes=self.instances.crashes,
            start_failures=self.instances.start_failures,
            log_path=self.runtime.log_path,
        )
        view["leadership"] = self.leader_view()
        return view

    async def down(self, actor: str) -> str:
        """Stop every process (front doors, then gateways, then workloads) and forget the spec."""
        self.downing = True
        async with self._lock:
            await self._audit(actor, "down", {})
            self.applied.forget()
            self.releases.reset()
            await self.save_state()
        return f"stopped {await self.instances.stop_everything()} processes"

    def shutdown(self) -> None:
        self._done.set()
