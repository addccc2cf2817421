"""The controller: holds the desired state, drives reconcile cycles, answers the API.

Observe (runtime statuses + events) → decide (``reconciling.decide``, pure) → act (stop,
start, push routes). Each cycle ends in one verdict sentence, logged when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alwayson import __version__
from alwayson.control.backoff import CrashRecord
from alwayson.control.databases import DatabaseOps
from alwayson.control.desired import (
    Context,
    agent_config_path,
    agent_config_text,
    allocate_slots,
    desired_instances,
    frontdoor_id,
    gateway_id,
    listen_addresses,
    takeover_args,
)
from alwayson.control.drilling import DrillOps
from alwayson.control.observing import Observatory
from alwayson.control.pushing import RoutePusher, write_table
from alwayson.control.reconciling import Decision, Observed, Snapshot, decide
from alwayson.control.releasing import ReleaseDriver
from alwayson.control.routing import Table, frontdoor_table, same_table, site_table
from alwayson.data.layout import secrets_of, write_private
from alwayson.release.model import Release
from alwayson.runtime.base import (
    EventKind,
    InstanceSpec,
    InstanceStatus,
    Kind,
    Phase,
    RuntimeEvent,
)
from alwayson.runtime.local import LocalRuntime, check_user_can_run
from alwayson.spec.loading import LoadedSpec, load_spec_text
from alwayson.spec.models import MAX_REPLICAS, PlatformSpec, ReleasePolicy
from alwayson.spec.planning import Change, Overrides, plan
from alwayson.store.base import AuditEntry, Event, StateStore
from alwayson.util.addresses import port_is_free, split_hostport
from alwayson.util.clocks import Clock
from alwayson.util.errors import (
    AlwaysonError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from alwayson.util.merging import deep_merge

log = logging.getLogger("alwayson.controller")

DESIRED_KEY = "desired"
SLOTS_KEY = "addressing"
STOP_ORDER = (Kind.FRONTDOOR, Kind.GATEWAY, Kind.WORKLOAD, Kind.AGENT, Kind.KEEPER)
DRAIN_PUSH_DEADLINE = 5.0
DRAIN_RETRY = 0.1
REPLACE_READY_DEADLINE = 20.0


@dataclass(frozen=True)
class ApplyResult:
    changes: list[Change]
    digest: str


class Controller:
    def __init__(
        self,
        store: StateStore,
        runtime: LocalRuntime,
        state_dir: Path,
        clock: Clock,
        pusher: RoutePusher,
        default_user: str | None,
        interval: float = 1.0,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.state_dir = state_dir
        self.clock = clock
        self.pusher = pusher
        self.default_user = default_user
        self.interval = interval
        self.loaded: LoadedSpec | None = None
        self.overrides: Overrides = {}
        self.slots: dict[str, int] = {}
        self.crashes: dict[str, CrashRecord] = {}
        self.start_failures: dict[str, str] = {}
        self.stopping: set[str] = set()
        self.draining: set[str] = set()
        self._desired_cache: tuple[object, dict[str, InstanceSpec]] | None = None
        self.pushed: dict[str, Table] = {}
        self.generation = 0
        self.verdict = "starting"
        self.cycles = 0
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self.releases = ReleaseDriver(self, store)
        self.databases = DatabaseOps(self)
        self.drills = DrillOps(self)
        self.autoscaled: Overrides = {}
        self.observatory = Observatory(self, state_dir)
        self.observed_view = self.observatory.observed_view
        (state_dir / "run" / "handover").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ desired state

    async def load(self) -> None:
        await self.observatory.load()
        await self.drills.load()
        record = await self.store.get(DESIRED_KEY)
        slots = await self.store.get(SLOTS_KEY)
        self.slots = {k: int(v) for k, v in (slots.value if slots else {}).items()}
        if record is None:
            return
        value = record.value
        self.loaded = load_spec_text(value["text"], Path(value["path"]), check_commands=False)
        self.overrides = {(s, site): int(n) for s, site, n in value.get("overrides", [])}
        self.autoscaled = {(s, site): int(n) for s, site, n in value.get("autoscaled", [])}
        self.releases.load_state(value.get("releases", {}))
        await self.releases.load()

    async def _save(self) -> None:
        if self.loaded is None:
            await self.store.delete(DESIRED_KEY)
            return
        await self.store.put(
            DESIRED_KEY,
            {
                "text": self.loaded.text,
                "path": str(self.loaded.path),
                "overrides": [[s, site, n] for (s, site), n in sorted(self.overrides.items())],
                "autoscaled": [[s, site, n] for (s, site), n in sorted(self.autoscaled.items())],
                "releases": self.releases.dump_state(),
                "applied_at": self.clock.wall(),
            },
        )
        await self.store.put(SLOTS_KEY, dict(self.slots))

    async def save_state(self) -> None:
        await self._save()

    def wake(self) -> None:
        self._wake.set()

    async def record_event(
        self, kind: str, subject: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        await self.store.append_event(Event(self.clock.wall(), kind, subject, message, data or {}))

    def spec_or_none(self) -> PlatformSpec | None:
        return self.loaded.spec if self.loaded else None

    def spec(self) -> PlatformSpec:
        if self.loaded is None:
            raise NotFoundError("nothing is applied yet; run `alwayson up` first")
        return self.loaded.spec

    def spec_folder(self) -> Path:
        if self.loaded is None:
            raise NotFoundError("nothing is applied yet; run `alwayson up` first")
        return self.loaded.folder

    def _context(self, loaded: LoadedSpec, slots: dict[str, int]) -> Context:
        user = loaded.spec.runtime.user or self.default_user
        passwords = secrets_of(self.state_dir, loaded.spec) if loaded.spec.databases else {}
        return Context(loaded.folder, self.state_dir, user, slots, passwords)

    def desired(self) -> dict[str, InstanceSpec]:
        """What should run; recomputed only when the spec, drift or address slots change."""
        if self.loaded is None:
            return {}
        counts = {**self._autoscaled_counts(self.loaded.spec), **self.overrides}
        key = (
            self.loaded,
            tuple(sorted(counts.items())),
            tuple(self.slots.items()),
            self.releases.cache_key(),
            tuple(sorted(self.drills.sites_down)),
        )
        if self._desired_cache is None or self._desired_cache[0] != key:
            ctx = self._context(self.loaded, self.slots)
            variants = self.releases.variants(self.loaded.spec)
            every = desired_instances(self.loaded.spec, counts, ctx, variants)
            down = self.drills.sites_down  # a lost site runs nothing until it is restored
            self._desired_cache = (
                key,
                {k: v for k, v in every.items() if v.site not in down},
            )
        return self._desired_cache[1]

    def invalidate(self) -> None:
        """Forget the cached desired state (something it depends on changed)."""
        self._desired_cache = None

    def _autoscaled_counts(self, spec: PlatformSpec) -> Overrides:
        """The autoscaler's counts, for services that still autoscale, within min..max."""
        out: Overrides = {}
        for (service, site), n in self.autoscaled.items():
            with contextlib.suppress(KeyError):
                scale = spec.service(service).autoscale
                if scale is not None:
                    out[(service, site)] = max(scale.min, min(scale.max, n))
        return out

    async def autoscale(self, service: str, site: str, replicas: int) -> None:
        """The autoscaler's decision; unlike ``scale`` it is not drift from the spec."""
        async with self._lock:
            before = self.desired_count(service, site)
            self.autoscaled[(service, site)] = replicas
            await self._save()
        await self._event("autoscaled", f"{service}@{site}", f"{before} -> {replicas} instances")
        self._wake.set()

    def desired_count(self, service: str, site: str) -> int:
        return sum(
            1
            for inst in self.desired().values()
            if inst.kind is Kind.WORKLOAD and inst.service == service and inst.site == site
        )

    def spawn_background(self, coro: Coroutine[Any, Any, object]) -> None:
        self._spawn(coro)

    async def plan(self, text: str, path: str) -> list[Change]:
        loaded = load_spec_text(text, Path(path))
        return plan(
            loaded.spec,
            self.loaded.spec if self.loaded else None,
            self.overrides,
            self.releases.versions,
        )

    async def apply(self, text: str, path: str, actor: str) -> ApplyResult:
        """Validate everything first; only then replace the desired state (all or nothing)."""
        loaded = load_spec_text(text, Path(path))
        async with self._lock:
            changes = plan(
                loaded.spec,
                self.loaded.spec if self.loaded else None,
                self.overrides,
                self.releases.versions,
            )
            slots = allocate_slots(loaded.spec, self.slots)
            releases = self._releases_for(loaded, actor)
            new = desired_instances(loaded.spec, {}, self._context(loaded, slots))
            self._preflight(loaded, new)
            # In one step (no await in between): the new spec and the releases it starts, so
            # no cycle ever sees the new version without its release (it would replace the
            # old instances in place).
            self.loaded, self.slots, self.overrides = loaded, slots, {}
            self.releases.versions = {}  # the file is the truth again: deploy drift ends
            for release in releases:
                self.releases.active[release.service] = release
            self.start_failures.clear()
            for ident in [i for i in self.crashes if i not in new]:
                del self.crashes[ident]
            for release in releases:
                await self.releases.begin(release)
            await self._save()
            await self._audit(actor, "apply", {"spec": str(loaded.path), "changes": changes})
        self._wake.set()
        return ApplyResult(changes, loaded.digest)

    def _releases_for(self, loaded: LoadedSpec, actor: str) -> list[Release]:
        """Releases an apply starts: services whose version or run command changed."""
        new = loaded.spec
        if self.loaded is None or new.platform != self.loaded.spec.platform:
            return []
        current = self.loaded.spec
        out: list[Release] = []
        for svc in new.services:
            old = next((s for s in current.services if s.name == svc.name), None)
            if old is None or self.releases.effective(old) == (svc.version, svc.run):
                continue
            out.append(
                self.releases.prepare(
                    new,
                    {},
                    svc.name,
                    svc.version,
                    svc.run,
                    svc.release.strategy,
                    actor,
                    "apply: the spec's version or run command changed",
                    folder=loaded.folder,
                    stable=self.releases.effective(old),
                )
            )
        return out

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
            svc = spec.service(service) if service in {s.name for s in spec.services} else None
            if svc is None:
                known = ", ".join(s.name for s in spec.services) or "none"
                raise NotFoundError(f"unknown service {service!r} (services: {known})")
            policy = svc.release
            if settings:
                merged = deep_merge(policy.model_dump(mode="json"), settings)
                try:
                    policy = ReleasePolicy.model_validate(merged)
                except ValueError as exc:
                    raise PermanentError(f"release settings: {exc}") from None
            chosen = strategy or policy.strategy
            release = self.releases.prepare(
                spec,
                self.overrides,
                service,
                version,
                run if run is not None else self.releases.effective(svc)[1],
                chosen,
                actor,
                f"alwayson deploy by {actor}",
                policy,
            )
            await self._audit(
                actor,
                "deploy",
                {"service": service, "version": version, "run": run, "strategy": chosen},
            )
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
                self.overrides,
                service,
                version,
                run,
                "rollback",
                actor,
                f"alwayson release rollback by {actor}",
            )
            await self._audit(actor, "release-rollback", {"service": service, "to": version})
            return await self.releases.begin(release)

    def _preflight(self, loaded: LoadedSpec, new: dict[str, InstanceSpec]) -> None:
        running = {s.spec.id: s for s in self.runtime.statuses() if s.phase is not Phase.EXITED}
        taken: list[str] = []
        for ident, inst in new.items():
            current = running.get(ident)
            if current is not None and listen_addresses(current.spec) == listen_addresses(inst):
                continue
            mine = {a for s in running.values() for a in listen_addresses(s.spec)}
            for address in listen_addresses(inst):
                host, port = split_hostport(address)
                if address not in mine and not port_is_free(host, port):
                    taken.append(f"{address} ({_field_of(inst)})")
        if taken:
            raise PermanentError(
                f"{loaded.path}: address already in use by another process: "
                + ", ".join(sorted(set(taken)))
                + ". Stop that process or change the port in the spec; nothing was changed."
            )
        user = loaded.spec.runtime.user or self.default_user
        workloads = [i for i in new.values() if i.kind is Kind.WORKLOAD]
        if workloads:
            problem = check_user_can_run(user, workloads[0].argv[0], workloads[0].cwd)
            if problem:
                raise PermanentError(f"{loaded.path}: runtime.user: {problem}")

    async def scale(self, service: str, replicas: int, site: str | None, actor: str) -> str:
        if self.loaded is None:
            raise NotFoundError("nothing is applied yet; run `alwayson up` first")
        spec = self.loaded.spec
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
                self.overrides[(service, name)] = replicas
            await self._save()
            await self._audit(
                actor, "scale", {"service": service, "replicas": replicas, "site": site}
            )
        self._wake.set()
        where = site or "every workload site"
        return f"{service}: {replicas} replicas in {where} (drift from the spec until `apply`)"

    # ------------------------------------------------------------ loop

    async def run(self) -> None:
        """Reconcile until ``shutdown``; every task started here is awaited here."""
        self._spawn(self.observatory.run())
        self._spawn(self.drills.run())
        try:
            while not self._done.is_set():
                await self._drain_events()
                try:
                    await self.cycle()
                except (TemporaryError, OSError) as exc:
                    log.warning("cycle failed, will retry: %s", exc)
                try:
                    await self.releases.tick()
                except (AlwaysonError, OSError) as exc:
                    log.warning("release step failed, will retry: %s", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        event = await self._wait_for_work()
                        if event is not None:
                            await self._handle(event)
                self._wake.clear()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.observatory.close()

    async def _wait_for_work(self) -> RuntimeEvent | None:
        """Return at a wake-up, at shutdown, or with the next runtime event."""
        wake = asyncio.ensure_future(self._wake.wait())
        event = asyncio.ensure_future(self.runtime.events.get())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({wake, event, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (wake, event, done):
                fut.cancel()
            await asyncio.gather(wake, event, done, return_exceptions=True)
        if event.done() and not event.cancelled() and event.exception() is None:
            return event.result()
        return None

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run an action in the background, owned here (awaited at shutdown), errors logged."""

        async def guarded() -> None:
            try:
                await coro
            except AlwaysonError as exc:
                log.error("%s", exc)
                await self._event("action-failed", "controller", str(exc))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cycle(self) -> Decision:
        desired = self.desired()
        now = self.clock.monotonic()
        observed = {
            s.spec.id: Observed(
                s.spec.id, s.spec.site, s.spec.service, s.spec.template_hash(), s.phase
            )
            for s in self.runtime.statuses()
            if s.phase is not Phase.EXITED
        }
        snap = Snapshot(
            now=now,
            desired=desired,
            observed=observed,
            stopping=frozenset(self.stopping),
            blocked_until={k: c.next_start_at for k, c in self.crashes.items()},
            crash_reasons={
                k: f"{c.last_reason}; backoff {c.delay:g}s"
                for k, c in self.crashes.items()
                if c.failures
            },
        )
        decision = decide(snap)
        for stop in decision.stops:
            self.stopping.add(stop.id)
            if self._can_hand_over(stop.id, desired):
                self._spawn(self._replace(desired[stop.id], stop.reason))
            else:
                self._spawn(self._stop(stop.id, stop.reason))
        if decision.starts:
            self._write_initial_tables(decision.starts)
            await asyncio.gather(*(self._start(s.spec, s.reason) for s in decision.starts))
        await self._push_routes()
        self.cycles += 1
        if decision.verdict != self.verdict:
            log.info("cycle %d: %s", self.cycles, decision.verdict)
            self.verdict = decision.verdict
        return decision

    async def _start(self, spec: InstanceSpec, reason: str) -> None:
        try:
            if spec.kind is Kind.WORKLOAD and not port_is_free(spec.host, spec.port):
                raise PermanentError(
                    f"{spec.id}: address {spec.host}:{spec.port} is in use by another process "
                    f"(service {spec.service}, port {spec.port})"
                )
            if spec.kind is Kind.AGENT and self.loaded is not None:
                ctx = self._context(self.loaded, self.slots)
                write_private(
                    agent_config_path(self.state_dir, spec.site),
                    agent_config_text(self.loaded.spec, spec.site, ctx),
                )
            status = await self.runtime.start(spec)
        except PermanentError as exc:
            record = self.crashes.setdefault(spec.id, CrashRecord())
            delay = record.crashed(self.clock.monotonic(), str(exc), None, 0.0)
            self.start_failures[spec.id] = str(exc)
            log.error("cannot start %s: %s (retry in %.1fs)", spec.id, exc, delay)
            await self._event("start-failed", spec.id, str(exc))
            return
        log.debug("started %s pid %d (%s)", spec.id, status.pid, reason)

    async def _stop(self, ident: str, reason: str, drain: bool = True) -> None:
        """Take the process out of every routing table first, then SIGTERM it (drain)."""
        try:
            if drain:
                await self._drain(ident)
            await self.runtime.stop(ident)
            await self._event("stopped", ident, reason)
        except NotFoundError:
            pass
        finally:
            self.stopping.discard(ident)
            self.draining.discard(ident)
            self.pushed.pop(ident, None)
            self._wake.set()

    def _can_hand_over(self, ident: str, desired: dict[str, InstanceSpec]) -> bool:
        """A gateway whose addresses stay the same is replaced by socket handover."""
        new = desired.get(ident)
        old = next((s for s in self.runtime.statuses() if s.spec.id == ident), None)
        return (
            new is not None
            and old is not None
            and new.kind in (Kind.GATEWAY, Kind.FRONTDOOR)
            and listen_addresses(new) == listen_addresses(old.spec)
        )

    async def _replace(self, spec: InstanceSpec, reason: str) -> dict[str, Any]:
        """Start a successor that takes the listening sockets over; the old one drains."""
        old = next((s for s in self.runtime.statuses() if s.spec.id == spec.id), None)
        started = self.clock.monotonic()
        self.stopping.add(spec.id)
        try:
            new = await self.runtime.replace(spec, takeover_args(spec))
            await self._event(
                "replaced", spec.id, f"{reason}: pid {old.pid if old else '-'} → {new.pid}"
            )
        finally:
            self.stopping.discard(spec.id)
            self.pushed.pop(spec.id, None)
            self._wake.set()
        deadline = self.clock.monotonic() + REPLACE_READY_DEADLINE
        while not new.ready and new.phase is not Phase.EXITED:
            if self.clock.monotonic() > deadline:
                raise TemporaryError(f"{spec.id}: the new process (pid {new.pid}) is not ready")
            await asyncio.sleep(DRAIN_RETRY)
        return {
            "id": spec.id,
            "old_pid": old.pid if old else None,
            "new_pid": new.pid,
            "seconds": round(self.clock.monotonic() - started, 3),
        }

    async def restart_gateways(self, site: str | None, actor: str) -> list[dict[str, Any]]:
        """Replace each site's gateway, then its front door, handing sockets over."""
        spec = self.spec()
        sites = [s.name for s in spec.workload_sites]
        await self._audit(actor, "gateway-restart", {"site": site})
        return await self._replace_components(_only_site(sites, site), "restart requested")

    async def _replace_components(self, sites: list[str], reason: str) -> list[dict[str, Any]]:
        """Site by site, the gateway then the front door, each ready before the next."""
        desired = self.desired()
        results = []
        for name in sites:
            for ident in (gateway_id(name), frontdoor_id(name)):
                if ident in self.stopping:
                    raise ConflictError(f"{ident} is already being stopped or replaced")
                results.append(await self._replace(desired[ident], reason))
        return results

    async def upgrade_gateways(self, site: str | None, actor: str) -> dict[str, Any]:
        """Replace the gateways and front doors site by site, the secondary site first.

        Each replacement hands the listening sockets over (no refused connection) and waits
        until the new process is ready before the next one starts."""
        spec = self.spec()
        sites = _only_site([s.name for s in reversed(spec.workload_sites)], site)
        if any(self.releases.running(s.name) for s in spec.services):
            raise ConflictError("a service release is running; upgrade the gateways after it")
        started = self.clock.monotonic()
        await self._audit(actor, "upgrade-gateway", {"site": site})
        replaced = []
        for name in sites:
            replaced += await self._replace_components([name], "upgrade")
            await self._event("upgraded", f"gateway@{name}", f"site {name} upgraded")
        return {
            "version": __version__,
            "sites": sites,
            "replaced": replaced,
            "seconds": round(self.clock.monotonic() - started, 3),
        }

    async def _drain(self, ident: str) -> None:
        """Wait until every ready gateway has a table without ``ident`` (bounded)."""
        self.draining.add(ident)
        deadline = self.clock.monotonic() + DRAIN_PUSH_DEADLINE
        while True:
            await self._push_routes()
            if not self._still_routed(ident):
                return
            if self.clock.monotonic() > deadline:
                log.warning("%s: not every gateway confirmed its removal; stopping anyway", ident)
                return
            await asyncio.sleep(DRAIN_RETRY)

    def _still_routed(self, ident: str) -> bool:
        for status in self.runtime.statuses():
            if status.spec.kind not in (Kind.GATEWAY, Kind.FRONTDOOR) or not status.ready:
                continue
            table = self.pushed.get(status.spec.id)
            if table is None:
                return True
            for route in table["routes"]:
                if any(b["id"] == ident for b in route["backends"]):
                    return True
        return False

    # ------------------------------------------------------------ events

    async def _drain_events(self) -> None:
        while not self.runtime.events.empty():
            await self._handle(self.runtime.events.get_nowait())

    async def _handle(self, event: RuntimeEvent) -> None:
        kind, ident, detail = event.kind, event.instance_id, event.detail
        now = self.clock.monotonic()
        failed = kind in (EventKind.UNHEALTHY, EventKind.START_TIMEOUT) or (
            kind is EventKind.EXITED and not event.data.get("expected")
        )
        inst = self.desired().get(ident)
        if failed and inst is not None and inst.kind is Kind.WORKLOAD:
            running = self.releases.running(inst.service)
            if running is not None and inst.version == running.candidate.label:
                self.releases.note_failure(
                    inst.service, self.clock.wall(), f"{ident} {kind.value}: {detail}"
                )
        if kind is EventKind.EXITED:
            expected = bool(event.data.get("expected"))
            status = next((s for s in self.runtime.statuses() if s.spec.id == ident), None)
            self.pushed.pop(ident, None)
            if not expected and ident in self.desired():
                ran_for = time.time() - status.started_at if status else 0.0
                record = self.crashes.setdefault(ident, CrashRecord())
                delay = record.crashed(now, detail, event.exit_code, ran_for)
                log.warning("%s %s; restarting in %.1fs", ident, detail, delay)
                await self._event("crashed", ident, f"{detail}; restart in {delay:.1f}s")
            if not expected:
                self.runtime.forget(ident)
                self.observatory.poke()
        elif kind in (EventKind.UNHEALTHY, EventKind.START_TIMEOUT):
            record = self.crashes.setdefault(ident, CrashRecord())
            delay = record.crashed(now, detail, None, 0.0)
            if kind is EventKind.START_TIMEOUT:
                self.start_failures[ident] = detail
            log.warning("%s: %s; restarting in %.1fs", ident, detail, delay)
            await self._event(kind.value, ident, detail)
            if ident not in self.stopping:
                self.stopping.add(ident)
                self._spawn(self._stop(ident, detail))
        elif kind is EventKind.READY:
            self.start_failures.pop(ident, None)
            self.pushed.pop(ident, None)
        self._wake.set()

    async def _event(self, kind: str, subject: str, message: str) -> None:
        await self.store.append_event(Event(self.clock.wall(), kind, subject, message))

    async def _audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        safe = {k: [str(c) for c in v] if k == "changes" else v for k, v in detail.items()}
        await self.store.append_audit(AuditEntry(self.clock.wall(), actor, action, safe))

    # ------------------------------------------------------------ routes

    def _tables(self) -> dict[str, tuple[InstanceStatus | None, InstanceSpec, Table]]:
        if self.loaded is None:
            return {}
        spec = self.loaded.spec
        everything = self.runtime.statuses()
        by_id = {s.spec.id: s for s in everything}
        statuses = [s for s in everything if s.spec.id not in self.draining]
        splits = self.releases.splits()
        out: dict[str, tuple[InstanceStatus | None, InstanceSpec, Table]] = {}
        for ident, inst in self.desired().items():
            if inst.kind is Kind.GATEWAY:
                table = site_table(spec, inst.site, statuses, splits)
            elif inst.kind is Kind.FRONTDOOR:
                table = frontdoor_table(spec, inst.site, statuses)
            else:
                continue
            out[ident] = (by_id.get(ident), inst, table)
        return out

    def _next_generation(self) -> int:
        self.generation = max(self.generation + 1, int(self.clock.wall() * 1000))
        return self.generation

    def _write_initial_tables(self, starts: list[Any]) -> None:
        tables = self._tables()
        for start in starts:
            if start.spec.id in tables:
                _, inst, table = tables[start.spec.id]
                table = dict(table, generation=self._next_generation())
                write_table(_routes_file(inst), table)
                self.pushed[inst.id] = table

    async def _push_routes(self) -> None:
        pushes = []
        for ident, (status, inst, table) in self._tables().items():
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

    # ------------------------------------------------------------ views and shutdown

    def status(self) -> dict[str, Any]:
        spec = self.loaded.spec if self.loaded else None
        desired = self.desired()
        statuses = {s.spec.id: s for s in self.runtime.statuses()}
        instances = []
        for ident in sorted(set(desired) | set(statuses)):
            status = statuses.get(ident)
            inst = desired.get(ident) or (status.spec if status else None)
            if inst is None:
                continue
            crash = self.crashes.get(ident)
            row: dict[str, Any] = {
                "id": ident,
                "kind": inst.kind.value,
                "site": inst.site,
                "service": inst.service,
                "version": inst.version,
                "address": f"{inst.host}:{inst.port}",
                "desired": ident in desired,
                "pid": status.pid if status else None,
                "phase": status.phase.value if status else "pending",
                "ready": bool(status and status.ready),
                "adopted": bool(status and status.adopted),
                "started_at": status.started_at if status else None,
                "restarts": crash.total_restarts if crash else 0,
                "failures": crash.failures if crash else 0,
                "last_exit": crash.last_reason if crash else "",
                "last_probe": status.last_probe if status else "",
                "start_failure": self.start_failures.get(ident, ""),
                "log": self.runtime.log_path(inst.site, ident),
            }
            instances.append(row)
        sites = []
        for site in spec.sites if spec else []:
            rows = [i for i in instances if i["site"] == site.name and i["desired"]]
            sites.append(
                {
                    "name": site.name,
                    "witness": site.witness,
                    "subnet": spec.subnet_of(site.name) if spec else "",
                    "desired": len(rows),
                    "ready": sum(1 for r in rows if r["ready"]),
                }
            )
        services = []
        for svc in spec.services if spec else []:
            rows = [i for i in instances if i["service"] == svc.name and i["desired"]]
            running = self.releases.running(svc.name)
            services.append(
                {
                    "name": svc.name,
                    "version": self.releases.effective(svc)[0],
                    "release": running.summary() if running else None,
                    "port": svc.port,
                    "desired": len(rows),
                    "ready": sum(1 for r in rows if r["ready"]),
                    "routes": [r.model_dump(exclude_none=True) for r in svc.routes],
                }
            )
        ready = sum(1 for i in instances if i["desired"] and i["ready"])
        return {
            "platform": spec.platform if spec else None,
            "spec": str(self.loaded.path) if self.loaded else None,
            "digest": self.loaded.digest if self.loaded else None,
            "front_door": f"http://{spec.front_door.listen}" if spec else None,
            "verdict": self.verdict,
            "cycles": self.cycles,
            "desired": len(desired),
            "ready": ready,
            "converged": bool(desired) and ready == len(desired),
            "drift": [
                {"service": s, "site": site, "replicas": n}
                for (s, site), n in sorted(self.overrides.items())
            ],
            "sites": sites,
            "services": services,
            "instances": instances,
        }

    async def down(self, actor: str) -> str:
        """Stop every process (front doors, then gateways, then workloads) and forget the spec."""
        async with self._lock:
            await self._audit(actor, "down", {})
            self.loaded = None
            self.overrides = {}
            self.autoscaled = {}
            self.releases.reset()
            await self._save()
        statuses = [s for s in self.runtime.statuses() if s.phase is not Phase.EXITED]
        for kind in STOP_ORDER:
            tier = [s.spec.id for s in statuses if s.spec.kind is kind]
            self.stopping.update(tier)
            await asyncio.gather(*(self._stop(i, "down", drain=False) for i in tier))
        return f"stopped {len(statuses)} processes"

    def shutdown(self) -> None:
        self._done.set()


def _only_site(sites: list[str], site: str | None) -> list[str]:
    """``sites``, or just ``site`` when one is named (which must be among them)."""
    if site is None:
        return sites
    if site not in sites:
        raise NotFoundError(f"unknown workload site {site!r} (sites: {', '.join(sites)})")
    return [site]


def _routes_file(inst: InstanceSpec) -> Path:
    return Path(inst.argv[inst.argv.index("--routes-file") + 1])


def _field_of(inst: InstanceSpec) -> str:
    if inst.kind is Kind.FRONTDOOR:
        return "front_door.listen / gateway.admin_port"
    if inst.kind is Kind.GATEWAY:
        return "gateway.port / gateway.admin_port"
    return f"services.{inst.service}.port"
