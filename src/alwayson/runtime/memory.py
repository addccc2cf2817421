"""The in-memory runtime: the ``Runtime`` contract without a process, for tests.

Instances are ``FakeProcess``es of a ``MemoryWorld`` (memory_world.py), which outlives any
one runtime: a second ``MemoryRuntime`` over the same world adopts what the first started.
Time is the world's clock, so stop grace, probe thresholds and start timeouts run on a
``ManualClock`` in microseconds.

Probes are modelled, not run: a process answers its readiness probe while it is ``ready``
and not stopped. A flip is reported once it has held for ``interval * threshold`` of the
clock (what consecutive probe results mean for the local runtime), the first readiness on
the loop turn after start. Differences from the local runtime, on purpose: a start
timeout is reported once per start, not every ``start_timeout`` (the controller stops the
instance at the first report); probes cost no time.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from alwayson.runtime.base import (
    EventKind,
    InstanceSpec,
    InstanceStatus,
    Phase,
    RuntimeEvent,
    Usage,
    describe_exit,
)
from alwayson.runtime.memory_world import (
    Behaviour,
    FakeProcess,
    MemoryProcesses,
    MemoryWorld,
    PidRecord,
)
from alwayson.util.errors import ConflictError, NotFoundError, PermanentError

__all__ = ["Behaviour", "FakeProcess", "MemoryProcesses", "MemoryRuntime", "MemoryWorld"]

STARTUP_PROBE_PERIOD = 0.1
KILL_WAIT = 10.0
IMMEDIATE_TURNS = 5


@dataclass(eq=False)
class _Watched:
    status: InstanceStatus
    process: FakeProcess
    own: bool  # started by this runtime: its exit code is known
    exited: asyncio.Future[None]
    stopping: bool = False
    probers: list[asyncio.Task[None]] = field(default_factory=list)
    on_exit: Callable[[FakeProcess], None] | None = None

    def stop_probing(self) -> None:
        for task in self.probers:
            task.cancel()


class MemoryRuntime:
    def __init__(self, world: MemoryWorld) -> None:
        self.world = world
        self.clock = world.clock
        self.events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
        self._watched: dict[str, _Watched] = {}

    # ----------------------------------------------------------------- queries

    def statuses(self) -> list[InstanceStatus]:
        return [w.status for w in self._watched.values()]

    def status(self, instance_id: str) -> InstanceStatus:
        try:
            return self._watched[instance_id].status
        except KeyError:
            raise NotFoundError(f"no instance {instance_id!r}") from None

    def log_path(self, site: str, instance_id: str) -> str:
        return str(self.world.log_path(site, instance_id))

    def usage(self) -> dict[str, Usage]:
        return {
            ident: Usage(w.process.cpu_seconds, w.process.rss_bytes)
            for ident, w in self._watched.items()
            if w.process.running
        }

    # ----------------------------------------------------------------- adopt

    async def adopt(self) -> list[InstanceStatus]:
        adopted: list[InstanceStatus] = []
        for ident, record in sorted(self.world.records.items()):
            if ident in self._watched:
                continue
            if not self.world.alive(record.pid, record.start_time):
                del self.world.records[ident]
                await self.events.put(
                    RuntimeEvent(
                        EventKind.EXITED,
                        ident,
                        "exited while the controller was down (exit code unknown)",
                        data={"expected": False, "spec": record.spec.to_json()},
                    )
                )
                continue
            status = InstanceStatus(
                spec=record.spec,
                pid=record.pid,
                start_time=record.start_time,
                started_at=record.started_at,
                adopted=True,
            )
            watched = self._watch(status, self.world.processes[record.pid], own=False)
            # One probe round before anyone routes on our view, as the local runtime does.
            status.last_probe = watched.process.probe_detail()
            ready = watched.process.answers_readiness()
            if ready:
                status.phase = Phase.READY
                status.ready_since = self.clock.wall()
            self._start_probing(watched, already_ready=ready)
            adopted.append(status)
        return adopted

    # ----------------------------------------------------------------- start

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        current = self._watched.get(spec.id)
        if current is not None and not current.exited.done():
            raise ConflictError(f"instance {spec.id} already runs (pid {current.status.pid})")
        return self._launch(spec, [])

    async def replace(
        self, spec: InstanceSpec, extra_args: list[str], timeout: float = 30.0
    ) -> InstanceStatus:
        old = self._watched.get(spec.id)
        if old is None or old.exited.done():
            return await self.start(spec)
        old.stopping = True
        old.status.phase = Phase.STOPPING
        old.stop_probing()
        new_status = self._launch(spec, extra_args)
        new = self._watched[spec.id]
        self.world.take_over(old.process.pid, new.process.pid)
        done = await self._first_of({old.exited, new.exited}, timeout)
        if new.exited in done and not old.exited.done():
            self._watched[spec.id] = old
            old.stopping = False
            old.status.phase = Phase.READY
            self._start_probing(old, already_ready=True)
            self._write_record(old.status)
            raise PermanentError(
                f"{spec.id}: the successor {new_status.exit_reason}; pid {old.status.pid} "
                f"keeps serving (log: {self.log_path(spec.site, spec.id)})"
            )
        if not done:
            self._signal_group(old, signal.SIGTERM)
            if not await self._first_of({old.exited}, old.status.spec.stop_grace):
                self._signal_group(old, signal.SIGKILL)
        return new_status

    def _launch(self, spec: InstanceSpec, extra_args: list[str]) -> InstanceStatus:
        behaviour = self.world.behaviours.get(spec.id, Behaviour())
        if behaviour.start_error is not None:
            raise PermanentError(
                f"{spec.service}: cannot start {spec.argv[0]!r}: {behaviour.start_error}"
            )
        argv = [*spec.argv, *extra_args]
        log_file = self.world.log_path(spec.site, spec.id)
        self.world.write_log(log_file, f"--- alwayson: starting {spec.id}: {' '.join(argv)}")
        process = self.world.spawn(argv, instance_id=spec.id)
        status = InstanceStatus(
            spec=spec, pid=process.pid, start_time=process.start_time, started_at=self.clock.wall()
        )
        self._write_record(status)
        watched = self._watch(status, process, own=True)
        self._start_probing(watched, already_ready=False)
        return status

    def _write_record(self, status: InstanceStatus) -> None:
        self.world.records[status.spec.id] = PidRecord(
            status.spec, status.pid, status.start_time, status.started_at
        )

    def _watch(self, status: InstanceStatus, process: FakeProcess, own: bool) -> _Watched:
        loop = asyncio.get_running_loop()
        watched = _Watched(status=status, process=process, own=own, exited=loop.create_future())
        watched.on_exit = lambda _process: self._on_exit(watched)
        process.watchers.append(watched.on_exit)
        self._watched[status.spec.id] = watched
        if not process.running:  # died between spawn and watch
            loop.call_soon(self._on_exit, watched)
        return watched

    # ----------------------------------------------------------------- exit

    def _on_exit(self, watched: _Watched) -> None:
        if watched.exited.done():
            return
        status = watched.status
        instance_id = status.spec.id
        current = self._watched.get(instance_id) is watched
        code = watched.process.exit_code if watched.own else None
        status.phase = Phase.EXITED
        status.exit_code = code
        status.exit_reason = describe_exit(code)
        watched.stop_probing()
        record = self.world.records.get(instance_id)
        if current and record is not None and record.pid == status.pid:
            del self.world.records[instance_id]
        watched.exited.set_result(None)
        self.events.put_nowait(
            RuntimeEvent(
                EventKind.EXITED,
                instance_id,
                status.exit_reason,
                exit_code=code,
                data={"expected": watched.stopping, "replaced": not current},
            )
        )

    # ----------------------------------------------------------------- stop and signals

    async def stop(self, instance_id: str, grace: float | None = None) -> None:
        watched = self._watched.get(instance_id)
        if watched is None:
            raise NotFoundError(f"no instance {instance_id!r}")
        if watched.exited.done():
            self._watched.pop(instance_id, None)
            return
        watched.stopping = True
        watched.status.phase = Phase.STOPPING
        watched.stop_probing()
        grace = watched.status.spec.stop_grace if grace is None else grace
        self._signal_group(watched, signal.SIGTERM)
        if not await self._first_of({watched.exited}, grace):
            self._signal_group(watched, signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(watched.exited), timeout=KILL_WAIT)
        self._watched.pop(instance_id, None)

    async def signal(self, instance_id: str, signum: int) -> None:
        watched = self._running(instance_id)
        self.world.deliver(watched.status.pid, signum)

    async def kill(self, instance_id: str, signum: int, *, tree: bool = False) -> list[int]:
        watched = self._running(instance_id)
        pid = watched.status.pid
        # Descendants are found before anything dies: a dead parent's children are
        # re-parented and could no longer be found.
        targets = [pid, *(p for p in self.world.group_of(pid) if p != pid)]
        if tree:
            targets += [p for p in self.world.descendants(pid) if p not in targets]
        return [target for target in targets if self.world.deliver(target, signum)]

    def forget(self, instance_id: str) -> None:
        watched = self._watched.get(instance_id)
        if watched is not None and watched.exited.done():
            del self._watched[instance_id]

    def _running(self, instance_id: str) -> _Watched:
        watched = self._watched.get(instance_id)
        if watched is None or watched.exited.done():
            raise NotFoundError(f"no running instance {instance_id!r}")
        return watched

    def _signal_group(self, watched: _Watched, signum: int) -> None:
        if watched.exited.done():
            return
        for pid in self.world.group_of(watched.status.pid):
            self.world.deliver(pid, signum)

    async def close(self) -> None:
        probers = [task for w in self._watched.values() for task in w.probers]
        for task in probers:
            task.cancel()
        await asyncio.gather(*probers, return_exceptions=True)
        for watched in self._watched.values():
            if watched.on_exit in watched.process.watchers:
                watched.process.watchers.remove(watched.on_exit)
        self._watched.clear()

    # ----------------------------------------------------------------- waiting

    async def _first_of(
        self, futures: set[asyncio.Future[None]], seconds: float
    ) -> set[asyncio.Future[None]]:
        """The futures done within ``seconds`` of the clock (empty: the time ran out)."""
        # What happens at once (an exit on SIGTERM, a first probe that answers) lands in a
        # few loop turns; give it those before a timer, so a clock that jumps on every
        # sleep (ManualClock(autojump=True)) does not move for things that took no time.
        for _ in range(IMMEDIATE_TURNS):
            if any(f.done() for f in futures):
                return {f for f in futures if f.done()}
            await asyncio.sleep(0)
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        waiting = {asyncio.shield(f) for f in futures}
        try:
            await asyncio.wait({timer, *waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            for shielded in waiting:
                shielded.cancel()
            await asyncio.gather(timer, *waiting, return_exceptions=True)
        return {f for f in futures if f.done()}

    async def _held(self, process: FakeProcess, condition: Callable[[], bool], secs: float) -> None:
        """Return once ``condition`` has held for ``secs`` of the clock without a break."""
        while True:
            while not condition():
                await process.changed()
            since = self.clock.monotonic()
            while condition():
                remaining = since + secs - self.clock.monotonic()
                if remaining <= 0:
                    return
                change = asyncio.ensure_future(process.changed())
                timer = asyncio.ensure_future(self.clock.sleep(remaining))
                try:
                    await asyncio.wait({change, timer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    change.cancel()
                    timer.cancel()
                    await asyncio.gather(change, timer, return_exceptions=True)

    # ----------------------------------------------------------------- probes

    def _start_probing(self, watched: _Watched, already_ready: bool) -> None:
        loop = asyncio.get_running_loop()
        ident = watched.status.spec.id
        watched.probers = [
            loop.create_task(self._readiness(watched, already_ready), name=f"ready:{ident}")
        ]
        if already_ready:
            watched.probers.append(loop.create_task(self._liveness(watched), name=f"live:{ident}"))

    async def _readiness(self, watched: _Watched, already_ready: bool) -> None:
        status, process = watched.status, watched.process
        readiness = status.spec.readiness
        answering = process.answers_readiness
        if not already_ready:
            await asyncio.sleep(0)  # the first probe goes out on the next loop turn
            ready = asyncio.ensure_future(
                self._held(
                    process, answering, STARTUP_PROBE_PERIOD * (readiness.success_threshold - 1)
                )
            )
            try:
                if not await self._first_of({ready}, readiness.start_timeout):
                    status.last_probe = process.probe_detail()
                    await self.events.put(
                        RuntimeEvent(
                            EventKind.START_TIMEOUT,
                            status.spec.id,
                            f"not ready {readiness.start_timeout:g}s after start "
                            f"(last probe: {status.last_probe})",
                        )
                    )
                    await ready
            finally:
                ready.cancel()
            await self._flip(watched, ready=True)
            watched.probers.append(asyncio.ensure_future(self._liveness(watched)))
        while True:
            failing = readiness.interval * readiness.failure_threshold
            await self._held(process, lambda: not answering(), failing)
            await self._flip(watched, ready=False)
            await self._held(process, answering, readiness.interval * readiness.success_threshold)
            await self._flip(watched, ready=True)

    async def _flip(self, watched: _Watched, ready: bool) -> None:
        status = watched.status
        status.last_probe = watched.process.probe_detail()
        if ready:
            status.phase = Phase.READY
            status.ready_since = self.clock.wall()
        else:
            status.phase = Phase.UNREADY
        kind = EventKind.READY if ready else EventKind.UNREADY
        await self.events.put(RuntimeEvent(kind, status.spec.id, status.last_probe))

    async def _liveness(self, watched: _Watched) -> None:
        spec, process = watched.status.spec, watched.process
        probe = spec.liveness or spec.readiness
        answering = process.answers_liveness if spec.liveness else process.answers_readiness
        failing = spec.readiness.interval * probe.failure_threshold
        while True:
            await self._held(process, lambda: not answering(), failing)
            await self.events.put(
                RuntimeEvent(
                    EventKind.UNHEALTHY,
                    spec.id,
                    f"liveness failed {probe.failure_threshold} times "
                    f"(last: {process.probe_detail()})",
                )
            )
            await self._held(process, answering, 0.0)
