"""Driving releases: the controller's side of :mod:`alwayson.release`.

Each tick observes every service under release (its instances per site and version, the
gateways' metrics, the tables pushed), calls the pure ``advance`` and stores the result
with compare-and-set before anything acts on it. Metrics come from the store the observe
loop fills: the driver asks it for a fresh round (``refresh``) and reads the gateways'
counters and evaluates the spec's checks with the one PromQL engine; it has no HTTP
client. The desired instances and the traffic split of a service under release come from
its stored record, so a controller restarted in the middle of a release continues from
the stored stage.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alwayson.control.desired import Variant
from alwayson.control.release_figures import ReleaseReading
from alwayson.control.routing import Split
from alwayson.release.model import Color, Phase, Release, Template, other_color, version_label
from alwayson.release.stepping import (
    abort,
    advance,
    plan_stages,
    promote,
    start,
)
from alwayson.spec.commands import CommandNotFound, check_run, service_variables
from alwayson.spec.loading import LoadedSpec
from alwayson.spec.models import PlatformSpec, ReleasePolicy, Service
from alwayson.spec.observing import check_expr_problem
from alwayson.spec.planning import effective_replicas
from alwayson.store.base import StateStore
from alwayson.util.errors import ConflictError, NotFoundError, PermanentError
from alwayson.util.merging import deep_merge

if TYPE_CHECKING:
    from alwayson.control.ports import EventSink, Figures, Saver, StateReader, Waker
    from alwayson.util.clocks import Clock

log = logging.getLogger("alwayson.releases")

INDEX_KEY = "releases"
HISTORY_KEEP = 20
STRATEGIES = ("rolling", "blue-green", "canary")


def record_key(service: str) -> str:
    return f"release/{service}"


def history_key(service: str) -> str:
    return f"release-history/{service}"


class ReleaseDriver:
    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        view: StateReader,
        events: EventSink,
        waker: Waker,
        saver: Saver,
        figures: Figures,
    ) -> None:
        self.store = store
        self.clock = clock
        self.view = view
        self.events = events
        self.waker = waker
        self.saver = saver
        self.figures = figures
        self.reading = ReleaseReading(view, figures, clock)
        self.active: dict[str, Release] = {}
        self.stored_version: dict[str, int] = {}
        self.next_id: dict[str, int] = {}
        self.failures: dict[str, list[tuple[float, str]]] = {}
        self.versions: dict[str, tuple[str, str]] = {}  # (version label, run) set by releases
        self.colors: dict[str, Color] = {}

    # ------------------------------------------------------------ state

    def dump_state(self) -> dict[str, Any]:
        return {
            "versions": {k: list(v) for k, v in sorted(self.versions.items())},
            "colors": dict(sorted(self.colors.items())),
        }

    def load_state(self, value: Mapping[str, Any]) -> None:
        self.versions = {k: (str(v[0]), str(v[1])) for k, v in value.get("versions", {}).items()}
        self.colors = {k: ("b" if v == "b" else "a") for k, v in value.get("colors", {}).items()}

    async def load(self) -> None:
        index = await self.store.get(INDEX_KEY)
        value = index.value if index else {}
        self.next_id = {k: int(v) for k, v in value.get("next_id", {}).items()}
        for service in value.get("active", []):
            record = await self.store.get(record_key(service))
            if record is None:
                continue
            release = Release.model_validate(record.value)
            self.stored_version[service] = record.version
            self.active[service] = release
            if not release.phase.active:
                await self._finish(release)  # the controller stopped while finishing it
        if self.active:
            log.info(
                "continuing releases: %s", "; ".join(r.summary() for r in self.active.values())
            )

    async def _save_index(self) -> None:
        await self.store.put(
            INDEX_KEY,
            {"active": sorted(self.active), "next_id": dict(sorted(self.next_id.items()))},
        )

    async def _store(self, release: Release) -> None:
        """Compare-and-set the record: a second controller never overwrites this one."""
        key = record_key(release.service)
        expected = self.stored_version.get(release.service)
        if not await self.store.compare_and_set(key, expected, release.model_dump(mode="json")):
            raise ConflictError(
                f"release of {release.service} was changed by another controller; not stepping"
            )
        stored = await self.store.get(key)
        self.stored_version[release.service] = stored.version if stored else 0

    def reset(self) -> None:
        self.active.clear()
        self.versions.clear()
        self.colors.clear()

    # ------------------------------------------------------------ what runs, how routed

    def effective(self, svc: Service) -> tuple[str, str]:
        return self.versions.get(svc.name, (svc.version, svc.run))

    def variants(self, spec: PlatformSpec) -> dict[str, list[Variant]]:
        out: dict[str, list[Variant]] = {}
        for svc in spec.services:
            release = self.active.get(svc.name)
            if release is not None and release.phase.active:
                counts = release.current.counts
                out[svc.name] = [
                    Variant(
                        release.stable.label,
                        release.stable.run,
                        release.stable.color,
                        {site: c.stable for site, c in counts.items()},
                    ),
                    Variant(
                        release.candidate.label,
                        release.candidate.run,
                        release.candidate.color,
                        {site: c.candidate for site, c in counts.items()},
                    ),
                ]
            else:
                version, run = self.effective(svc)
                out[svc.name] = [Variant(version, run, self.colors.get(svc.name, "a"))]
        return out

    def splits(self) -> dict[str, Split]:
        return {
            name: Split(r.candidate.label, r.current.routing, r.current.weight)
            for name, r in self.active.items()
            if r.phase.active
        }

    def cache_key(self) -> tuple[Any, ...]:
        return (
            tuple(
                (name, r.id, r.stage, len(r.stages), r.phase.value)
                for name, r in sorted(self.active.items())
            ),
            tuple(sorted(self.versions.items())),
            tuple(sorted(self.colors.items())),
        )

    def running(self, service: str) -> Release | None:
        release = self.active.get(service)
        return release if release is not None and release.phase.active else None

    # ------------------------------------------------------------ starting

    def prepare(
        self,
        spec: PlatformSpec,
        overrides: Mapping[tuple[str, str], int],
        service: str,
        version: str,
        run: str,
        strategy: str,
        actor: str,
        reason: str,
        policy: ReleasePolicy | None = None,
        *,
        folder: Path | None = None,
        stable: tuple[str, str] | None = None,
    ) -> Release:
        """A new release record (not yet started or stored); raises on bad input.

        ``stable`` is what runs now (default: the service's effective version); ``folder``
        the spec's folder, where the run command is resolved."""
        svc = _find(spec, service)
        running = self.running(service)
        if running is not None:
            raise ConflictError(f"a release is already running: {running.summary()}")
        if strategy not in (*STRATEGIES, "rollback"):
            raise PermanentError(
                f"unknown strategy {strategy!r}; use one of: {', '.join(STRATEGIES)}"
            )
        stable_version, stable_run = stable or self.effective(svc)
        if (version, run) == (stable_version, stable_run):
            raise PermanentError(
                f"{service} already runs version {version} with `{run}`; nothing to release"
            )
        check_command(run, folder or self.view.spec_folder(), service, service_variables(spec, svc))
        policy = policy or svc.release
        for index, check in enumerate(policy.analysis.checks):
            why = check_expr_problem(check)
            if why:
                raise PermanentError(
                    f"services.{service}.release.analysis.checks[{index}]: {check!r}: {why}"
                )
        color = self.colors.get(service, "a")
        current = Template(
            version=stable_version, run=stable_run, label=stable_version, color=color
        )
        candidate = Template(
            version=version,
            run=run,
            label=version_label(version, run, current),
            color=other_color(color),
        )
        sites = [s.name for s in spec.workload_sites]
        replicas = {
            site: effective_replicas(spec, dict(overrides), service, site) for site in sites
        }
        number = self.next_id.get(service, 0) + 1
        return Release(
            id=number,
            service=service,
            strategy=strategy,  # type: ignore[arg-type,unused-ignore]
            actor=actor,
            reason=reason,
            stable=current,
            candidate=candidate,
            settings=policy.model_dump(mode="json"),
            stages=plan_stages(strategy, policy, replicas, sites),
            started_at=0.0,
            stage_started_at=0.0,
        )

    def for_deploy(
        self,
        spec: PlatformSpec,
        counts: Mapping[tuple[str, str], int],
        service: str,
        version: str,
        run: str | None,
        strategy: str | None,
        settings: dict[str, Any] | None,
        actor: str,
    ) -> Release:
        """The release ``alwayson deploy`` asks for, its policy with ``settings`` on top."""
        svc = _find(spec, service)
        policy = svc.release
        if settings:
            merged = deep_merge(policy.model_dump(mode="json"), settings)
            try:
                policy = ReleasePolicy.model_validate(merged)
            except ValueError as exc:
                raise PermanentError(f"release settings: {exc}") from None
        return self.prepare(
            spec,
            counts,
            service,
            version,
            run if run is not None else self.effective(svc)[1],
            strategy or policy.strategy,
            actor,
            f"alwayson deploy by {actor}",
            policy,
        )

    def for_apply(
        self,
        current: PlatformSpec | None,
        loaded: LoadedSpec,
        counts: Mapping[tuple[str, str], int],
        actor: str,
    ) -> list[Release]:
        """Releases an apply starts: services whose version or run command changed."""
        new = loaded.spec
        if current is None or new.platform != current.platform:
            return []
        out: list[Release] = []
        for svc in new.services:
            old = next((s for s in current.services if s.name == svc.name), None)
            if old is None or self.effective(old) == (svc.version, svc.run):
                continue
            out.append(
                self.prepare(
                    new,
                    counts,
                    svc.name,
                    svc.version,
                    svc.run,
                    svc.release.strategy,
                    actor,
                    "apply: the spec's version or run command changed",
                    folder=loaded.folder,
                    stable=self.effective(old),
                )
            )
        return out

    async def begin(self, release: Release) -> Release:
        """Start a prepared release: from now on it shapes what runs."""
        # The baseline is the observe loop's last round, not a fresh one: this runs under the
        # controller's lock, which that loop's autoscaler may be waiting for.
        samples = self.reading.last_samples()
        release = start(release, self.clock.wall(), samples)
        self.next_id[release.service] = release.id
        self.stored_version.pop(release.service, None)
        existing = await self.store.get(record_key(release.service))
        if existing is not None:
            self.stored_version[release.service] = existing.version
        self.active[release.service] = release
        self.failures.pop(release.service, None)
        await self._store(release)
        await self._save_index()
        await self.events.record_event("release-started", release.service, release.summary())
        self.waker.wake()
        return release

    # ------------------------------------------------------------ commands

    async def promote(self, service: str, full: bool) -> Release:
        release = self._must_run(service)
        stage = release.current
        if not full and not stage.manual and stage.hold <= 0 and not stage.analysis:
            raise PermanentError(
                f"nothing to promote: {release.summary()} is waiting for instances, not for "
                "a pause (use --full to skip every remaining pause)"
            )
        if release.phase is Phase.ROLLING_BACK:
            raise PermanentError(f"nothing to promote: {release.summary()}")
        updated = promote(release, full)
        await self._commit(updated)
        return updated

    async def abort(self, service: str, actor: str) -> Release:
        release = self._must_run(service)
        if release.phase is Phase.ROLLING_BACK:
            raise PermanentError(f"already rolling back: {release.summary()}")
        spec = self.view.spec()
        updated = abort(release, self.clock.wall(), self._replicas(spec, service), actor)
        await self._commit(updated)
        return updated

    def _must_run(self, service: str) -> Release:
        spec = self.view.spec()
        _find(spec, service)
        release = self.running(service)
        if release is None:
            raise PermanentError(f"no release of {service} is running; nothing to do")
        return release

    async def _commit(self, release: Release) -> None:
        await self._store(release)
        self.active[release.service] = release
        self.waker.wake()

    async def history(self, service: str | None) -> list[dict[str, Any]]:
        spec = self.view.spec()
        names = [service] if service else [s.name for s in spec.services]
        if service:
            _find(spec, service)
        out: list[dict[str, Any]] = []
        for name in names:
            record = await self.store.get(history_key(name))
            items = list(record.value.get("items", [])) if record else []
            current = self.active.get(name)
            if current is not None and current.phase.active:
                items.append(current.model_dump(mode="json"))
            out.extend(items)
        out.sort(key=lambda r: r.get("started_at", 0))
        return out

    async def rollback_target(self, service: str, to: str | None) -> tuple[str, str]:
        """The (version, run) a `release rollback` goes back to, from the history."""
        items = [r for r in await self.history(service) if r["service"] == service]
        svc = _find(self.view.spec(), service)
        current = self.effective(svc)
        for item in reversed(items):
            for side in ("stable", "candidate"):
                template = item[side]
                pair = (template["label"], template["run"])
                if pair == current:
                    continue
                if to is None and side == "stable" and item["phase"] == "succeeded":
                    return pair
                if to is not None and to in (template["label"], template["version"]):
                    return pair
        if to is None:
            raise PermanentError(f"{service} has no earlier release to roll back to")
        raise NotFoundError(f"version {to!r} of {service} is not in its release history")

    # ------------------------------------------------------------ ticking

    def note_failure(self, service: str, at: float, text: str) -> None:
        if self.running(service) is not None:
            self.failures.setdefault(service, []).append((at, text))

    async def tick(self) -> None:
        running = [r for r in self.active.values() if r.phase.active]
        if not running:
            return
        at, samples = await self.reading.scrape()
        spec = self.view.spec()
        for release in running:
            checks = self.reading.checks(release, at)
            outcome = advance(
                release,
                self.reading.observe(
                    release, samples, checks, self.failures.get(release.service, [])
                ),
                ReleasePolicy.model_validate(release.settings),
                self._replicas(spec, release.service),
            )
            updated = outcome.release
            if updated == release:
                continue
            await self._store(updated)
            self.active[release.service] = updated
            for note in outcome.notes:
                log.info("%s: %s", release.service, note)
                await self.events.record_event("release", release.service, note)
            if (updated.stage, updated.phase) != (release.stage, release.phase):
                self.waker.wake()
            if not updated.phase.active:
                await self._finish(updated)

    async def _finish(self, release: Release) -> None:
        """Make the outcome the new normal, then file the record in the history."""
        service = release.service
        if release.phase is Phase.SUCCEEDED:
            self.colors[service] = release.candidate.color
            spec = self.view.spec_or_none()
            svc = next((s for s in spec.services if s.name == service), None) if spec else None
            pair = (release.candidate.label, release.candidate.run)
            if svc is not None and pair == (svc.version, svc.run):
                self.versions.pop(service, None)
            else:
                self.versions[service] = pair
        await self.saver.save_state()
        record = await self.store.get(history_key(service))
        items = list(record.value.get("items", [])) if record else []
        if not any(i.get("id") == release.id for i in items):
            items.append(release.model_dump(mode="json"))
        await self.store.put(history_key(service), {"items": items[-HISTORY_KEEP:]})
        self.active.pop(service, None)
        await self._save_index()
        await self.events.record_event("release-ended", service, release.summary())
        self.waker.wake()

    def _replicas(self, spec: PlatformSpec, service: str) -> dict[str, int]:
        overrides = dict(self.view.state().counts)
        return {
            s.name: effective_replicas(spec, overrides, service, s.name)
            for s in spec.workload_sites
        }

    async def live_totals(self, release: Release) -> dict[str, Any]:
        """The release's totals so far, from the observe loop's last round (no new one)."""
        return self.reading.live_totals(release)


def _find(spec: PlatformSpec, service: str) -> Service:
    for svc in spec.services:
        if svc.name == service:
            return svc
    known = ", ".join(s.name for s in spec.services) or "none"
    raise NotFoundError(f"unknown service {service!r} (services: {known})")


def check_command(run: str, spec_folder: Path, service: str, known: Collection[str]) -> None:
    """The program of a run command must exist and its variables be ``known`` ones (a typo
    fails here, not as a crash loop)."""
    try:
        check_run(run, spec_folder, known)
    except CommandNotFound as exc:
        raise PermanentError(f"{service}: run command {run!r}: {exc}; nothing changed") from exc
