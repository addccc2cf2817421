"""The ``local`` runtime: instances are processes on this machine.

Each process runs in its own session (so a signal to its group reaches its children), its
output goes to a log file under the state directory, and it is recorded in a pid file with
its start time. Exits are watched with a pidfd, which works for processes we did not start
too, so a restarted controller adopts running instances instead of restarting them. Only
processes we started ourselves have a known exit code; an adopted one that exits is
reported with the code unknown.

A launch is recorded before the process exists (``<id>.launching``, with a random marker
the process gets in ``ALWAYSON_LAUNCH``) and replaced by its pid file once it runs. A
controller killed in between leaves the intent behind: the next one finds the process by
its marker and adopts it, instead of starting a second one that cannot get the address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alwayson.runtime.base import (
    EventKind,
    InstanceSpec,
    InstanceStatus,
    Phase,
    RuntimeEvent,
    Usage,
    describe_exit,
)
from alwayson.runtime.local_processes import (
    LocalProcesses,
    descendants,
    send,
    send_group,
    start_time_of,
    usage_of,
)
from alwayson.runtime.probing import Thresholds, run_probe
from alwayson.runtime.users import (
    CREDENTIALS_ENV,
    PRIVATE_DIR_ENV,
    check_user_can_run,
    deliver_secrets,
    ensure_private_dir,
    identity,
)
from alwayson.util.credentials import write_private
from alwayson.util.errors import ConflictError, NotFoundError, PermanentError

__all__ = ["LocalRuntime", "check_user_can_run", "describe_exit"]

log = logging.getLogger(__name__)
LAUNCH_ENV = "ALWAYSON_LAUNCH"  # the launch's marker, in the process's environment
LAUNCHING = ".launching"  # suffix of a launch intent beside the pid files


def run_dir(state_dir: Path) -> Path:
    """Where the pid files (and launch intents) of a state directory's processes are."""
    return state_dir / "run" / "instances"


def recorded_pids(state_dir: Path, pattern: str = "*") -> list[int]:
    """The pids the pid files of instances matching ``pattern`` record (alive or not)."""
    out = []
    for record in run_dir(state_dir).glob(f"{pattern}.json"):
        try:
            out.append(int(json.loads(record.read_text())["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def forget_record(state_dir: Path, instance_id: str, pid: int) -> None:
    """Remove ``instance_id``'s pid file if it records ``pid`` (a process that records
    itself out as it leaves, as the last controller does after ``down``)."""
    record = state_dir / "run" / "instances" / f"{instance_id}.json"
    try:
        if int(json.loads(record.read_text())["pid"]) == pid:
            record.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass


T = TypeVar("T")
U = TypeVar("U")


def _pid_and_start(record: dict[str, Any]) -> tuple[int, float]:
    return int(record["pid"]), float(record["start_time"])


def _marker_and_at(record: dict[str, Any]) -> tuple[str, float]:
    if not isinstance(record["marker"], str):
        raise TypeError("the marker is not a string")
    return record["marker"], float(record["at"])


def _write_json(target: Path, record: dict[str, object]) -> None:
    """Atomically, mode 0600: a record holds the instance's environment (its secrets)."""
    write_private(target, json.dumps(record, indent=1))


STARTUP_PROBE_PERIOD = 0.1
BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass
class _Watched:
    status: InstanceStatus
    pidfd: int
    popen: subprocess.Popen[bytes] | None
    exited: asyncio.Future[None]
    prober: asyncio.Task[None] | None = None
    stopping: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class LocalRuntime:
    def __init__(self, state_dir: Path) -> None:
        self.events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
        self._run_dir = run_dir(state_dir)
        self._log_dir = state_dir / "logs"
        self._run_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir.mkdir(parents=True, exist_ok=True)
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
        return str(self._log_dir / site / f"{instance_id}.log")

    def usage(self) -> dict[str, Usage]:
        found = {
            ident: usage_of(w.status.pid)
            for ident, w in self._watched.items()
            if not w.exited.done()
        }
        return {ident: usage for ident, usage in found.items() if usage is not None}

    # ----------------------------------------------------------------- adopt

    async def adopt(self) -> list[InstanceStatus]:
        self._recover_launches()
        adopted: list[InstanceStatus] = []
        found = self._records(".json", "pid file", _pid_and_start)
        for pidfile, record, spec, pid, start_time in found:
            if spec.id in self._watched:
                continue
            if not LocalProcesses().alive(pid, start_time):
                pidfile.unlink(missing_ok=True)
                await self.events.put(
                    RuntimeEvent(
                        EventKind.EXITED,
                        spec.id,
                        "exited while the controller was down (exit code unknown)",
                        data={"expected": False, "spec": spec.to_json()},
                    )
                )
                continue
            status = InstanceStatus(
                spec=spec,
                pid=pid,
                start_time=start_time,
                started_at=float(record.get("started_at", start_time)),
                adopted=True,
            )
            try:
                self._watch(status, popen=None, probe_first=False)
            except ProcessLookupError:
                pidfile.unlink(missing_ok=True)
                continue
            adopted.append(status)
        # One probe round before anyone routes on our view, so adoption never drops
        # healthy instances out of the gateways' tables.
        results = await asyncio.gather(
            *(run_probe(s.spec.readiness, s.spec.host, s.spec.port, s.spec.cwd) for s in adopted)
        )
        for status, result in zip(adopted, results, strict=True):
            status.last_probe = result.detail
            if result.ok:
                status.phase = Phase.READY
                status.ready_since = time.time()
            self._start_prober(self._watched[status.spec.id], already_ready=result.ok)
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
        """Start a successor beside the running process, which hands over and exits.

        Used for processes that pass their listening sockets on (gateways): ``extra_args``
        tells the successor where to take them from. Succeeds when the old process has
        exited and the new one still runs; if the new one dies first, the old one is kept.
        """
        old = self._watched.get(spec.id)
        if old is None or old.exited.done():
            return await self.start(spec)
        old.stopping = True
        old.status.phase = Phase.STOPPING
        if old.prober is not None:
            old.prober.cancel()
        new_status = self._launch(spec, extra_args)
        new = self._watched[spec.id]
        done, _ = await asyncio.wait(
            {old.exited, new.exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if new.exited in done and not old.exited.done():
            self._watched[spec.id] = old
            old.stopping = False
            old.status.phase = Phase.READY
            self._start_prober(old, already_ready=True)
            self._write_pidfile(old.status)
            raise PermanentError(
                f"{spec.id}: the successor {new_status.exit_reason}; pid {old.status.pid} "
                f"keeps serving (log: {self.log_path(spec.site, spec.id)})"
            )
        if not done:
            log.warning(
                "%s: pid %d did not hand over in %.0fs; stopping it",
                spec.id,
                old.status.pid,
                timeout,
            )
            self._signal_group(old, signal.SIGTERM)
            try:
                await asyncio.wait_for(
                    asyncio.shield(old.exited), timeout=old.status.spec.stop_grace
                )
            except TimeoutError:
                self._signal_group(old, signal.SIGKILL)
        return new_status

    def _launch(self, spec: InstanceSpec, extra_args: list[str]) -> InstanceStatus:
        log_file = Path(self.log_path(spec.site, spec.id))
        log_file.parent.mkdir(parents=True, exist_ok=True)
        ident = identity(spec.user)
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.update(spec.env)
        if PRIVATE_DIR_ENV in spec.env:
            ensure_private_dir(Path(spec.env[PRIVATE_DIR_ENV]), ident)
        if spec.secrets:
            try:
                deliver_secrets(Path(spec.env[CREDENTIALS_ENV]), spec.secrets, ident)
            except (OSError, KeyError) as exc:
                raise PermanentError(
                    f"{spec.service}: cannot give it its secrets ({exc}); apply the spec again"
                ) from exc
        marker = secrets.token_hex(12)
        env[LAUNCH_ENV] = marker
        intent = self._run_dir / f"{spec.id}{LAUNCHING}"
        _write_json(intent, {"marker": marker, "at": time.time(), "spec": spec.to_json()})
        with log_file.open("ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            argv = [*spec.argv, *extra_args]
            out.write(f"--- {stamp} alwayson: starting {spec.id}: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                popen = subprocess.Popen(
                    argv,
                    cwd=spec.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    user=ident.uid,
                    group=ident.gid,
                    extra_groups=ident.extra_groups,
                )
            except FileNotFoundError as exc:
                intent.unlink(missing_ok=True)
                raise PermanentError(
                    f"{spec.service}: cannot start {spec.argv[0]!r}: no such file "
                    f"(working directory {spec.cwd})"
                ) from exc
            except PermissionError as exc:
                intent.unlink(missing_ok=True)
                raise PermanentError(
                    f"{spec.service}: cannot start {spec.argv[0]!r}: permission denied "
                    f"({exc}); if workloads run as an unprivileged user, it must be able to "
                    "read the program and its folder"
                ) from exc
        status = InstanceStatus(
            spec=spec, pid=popen.pid, start_time=start_time_of(popen.pid), started_at=time.time()
        )
        self._write_pidfile(status)
        intent.unlink(missing_ok=True)
        self._watch(status, popen=popen, probe_first=True)
        return status

    def _write_pidfile(self, status: InstanceStatus) -> None:
        record = {
            "pid": status.pid,
            "start_time": status.start_time,
            "started_at": status.started_at,
            "spec": status.spec.to_json(),
        }
        _write_json(self._run_dir / f"{status.spec.id}.json", record)

    def _records(
        self, suffix: str, what: str, fields: Callable[[dict[str, Any]], tuple[T, U]]
    ) -> Iterator[tuple[Path, dict[str, Any], InstanceSpec, T, U]]:
        """Each readable record ending in ``suffix``: its path, content, spec and the two
        ``fields`` read from it. One that cannot be read is logged and removed."""
        for path in sorted(self._run_dir.glob(f"*{suffix}")):
            try:
                record = json.loads(path.read_text())
                spec = InstanceSpec.from_json(record["spec"])
                first, second = fields(record)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable %s %s: %s", what, path, exc)
                path.unlink(missing_ok=True)
                continue
            yield path, record, spec, first, second

    def _recover_launches(self) -> None:
        """Pid files for processes whose launcher died before writing one: found by the
        marker of their launch intent. An intent whose process is not found is dropped
        (the process never started, or has exited: nothing holds its address)."""
        intents = self._records(LAUNCHING, "launch intent", _marker_and_at)
        for intent, _, spec, marker, at in intents:
            if not (self._run_dir / f"{spec.id}.json").exists():
                found = LocalProcesses().find_by_env(LAUNCH_ENV, marker)
                if found is not None:
                    pid, start_time = found
                    log.warning(
                        "%s: pid %d was started by a controller that died before recording "
                        "it; adopting it",
                        spec.id,
                        pid,
                    )
                    self._write_pidfile(
                        InstanceStatus(spec=spec, pid=pid, start_time=start_time, started_at=at)
                    )
            intent.unlink(missing_ok=True)

    def _watch(
        self, status: InstanceStatus, popen: subprocess.Popen[bytes] | None, probe_first: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(status.pid)
        except ProcessLookupError:
            if popen is None:
                raise
            pidfd = -1
        watched = _Watched(status=status, pidfd=pidfd, popen=popen, exited=loop.create_future())
        self._watched[status.spec.id] = watched
        if pidfd < 0:
            loop.call_soon(self._on_exit, watched)
        else:
            loop.add_reader(pidfd, self._on_exit, watched)
        if probe_first:
            self._start_prober(watched, already_ready=False)

    def _start_prober(self, watched: _Watched, already_ready: bool) -> None:
        watched.prober = asyncio.get_running_loop().create_task(
            self._probe_loop(watched, already_ready), name=f"probe:{watched.status.spec.id}"
        )

    # ----------------------------------------------------------------- exit

    def _on_exit(self, watched: _Watched) -> None:
        if watched.exited.done():
            return
        instance_id = watched.status.spec.id
        current = self._watched.get(instance_id) is watched
        loop = asyncio.get_running_loop()
        if watched.pidfd >= 0:
            loop.remove_reader(watched.pidfd)
            os.close(watched.pidfd)
            watched.pidfd = -1
        code: int | None = None
        if watched.popen is not None:
            code = watched.popen.wait()
        status = watched.status
        status.phase = Phase.EXITED
        status.exit_code = code
        status.exit_reason = describe_exit(code)
        if watched.prober is not None:
            watched.prober.cancel()
        if current:
            (self._run_dir / f"{instance_id}.json").unlink(missing_ok=True)
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

    # ----------------------------------------------------------------- stop

    async def stop(self, instance_id: str, grace: float | None = None) -> None:
        watched = self._watched.get(instance_id)
        if watched is None:
            raise NotFoundError(f"no instance {instance_id!r}")
        if watched.exited.done():
            self._watched.pop(instance_id, None)
            return
        watched.stopping = True
        watched.status.phase = Phase.STOPPING
        if watched.prober is not None:
            watched.prober.cancel()
        grace = watched.status.spec.stop_grace if grace is None else grace
        self._signal_group(watched, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(watched.exited), timeout=grace)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs; sending SIGKILL", instance_id, grace)
            self._signal_group(watched, signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(watched.exited), timeout=10)
        self._watched.pop(instance_id, None)

    async def signal(self, instance_id: str, signum: int) -> None:
        send(self._running(instance_id).status.pid, signum)

    async def kill(self, instance_id: str, signum: int, *, tree: bool = False) -> list[int]:
        pid = self._running(instance_id).status.pid
        # Found before anything dies: a dead parent's children are re-parented to init.
        below = descendants(pid) if tree else []
        signalled = [pid] if send_group(pid, signum) else []
        return signalled + [child for child in below if send(child, signum)]

    def forget(self, instance_id: str) -> None:
        """Drop an exited instance from the table (the controller has seen its exit)."""
        watched = self._watched.get(instance_id)
        if watched is not None and watched.exited.done():
            del self._watched[instance_id]

    def _running(self, instance_id: str) -> _Watched:
        watched = self._watched.get(instance_id)
        if watched is None or watched.exited.done():
            raise NotFoundError(f"no running instance {instance_id!r}")
        return watched

    def _signal_group(self, watched: _Watched, signum: int) -> None:
        if not watched.exited.done():
            send_group(watched.status.pid, signum)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        probers = [w.prober for w in self._watched.values() if w.prober is not None]
        for task in probers:
            task.cancel()
        await asyncio.gather(*probers, return_exceptions=True)
        for watched in self._watched.values():
            if watched.pidfd >= 0:
                loop.remove_reader(watched.pidfd)
                os.close(watched.pidfd)
                watched.pidfd = -1
        self._watched.clear()

    # ----------------------------------------------------------------- probes

    async def _probe_loop(self, watched: _Watched, already_ready: bool) -> None:
        status = watched.status
        spec = status.spec
        readiness = Thresholds(spec.readiness.success_threshold, spec.readiness.failure_threshold)
        readiness.healthy = already_ready
        liveness_probe = spec.liveness
        shared = liveness_probe is None or _same_target(liveness_probe, spec)
        live = Thresholds(1, (liveness_probe or spec.readiness).failure_threshold, healthy=True)
        deadline = time.monotonic() + spec.readiness.start_timeout
        while not already_ready and not readiness.healthy:
            result = await run_probe(spec.readiness, spec.host, spec.port, spec.cwd)
            status.last_probe = result.detail
            if readiness.record(result.ok):
                status.phase = Phase.READY
                status.ready_since = time.time()
                await self.events.put(RuntimeEvent(EventKind.READY, spec.id, result.detail))
                break
            if time.monotonic() > deadline:
                await self.events.put(
                    RuntimeEvent(
                        EventKind.START_TIMEOUT,
                        spec.id,
                        f"not ready {spec.readiness.start_timeout:g}s after start "
                        f"(last probe: {result.detail})",
                    )
                )
                deadline = time.monotonic() + spec.readiness.start_timeout
            await asyncio.sleep(STARTUP_PROBE_PERIOD)
        while True:
            await asyncio.sleep(spec.readiness.interval)
            result = await run_probe(spec.readiness, spec.host, spec.port, spec.cwd)
            status.last_probe = result.detail
            flipped = readiness.record(result.ok)
            if flipped is True:
                status.phase = Phase.READY
                status.ready_since = time.time()
                await self.events.put(RuntimeEvent(EventKind.READY, spec.id, result.detail))
            elif flipped is False:
                status.phase = Phase.UNREADY
                await self.events.put(RuntimeEvent(EventKind.UNREADY, spec.id, result.detail))
            live_ok = result.ok
            if not shared and liveness_probe is not None:
                live_ok = (await run_probe(liveness_probe, spec.host, spec.port, spec.cwd)).ok
            if live.record(live_ok) is False:
                await self.events.put(
                    RuntimeEvent(
                        EventKind.UNHEALTHY,
                        spec.id,
                        f"liveness failed {live.failure_threshold} times (last: {result.detail})",
                    )
                )


def _same_target(liveness: object, spec: InstanceSpec) -> bool:
    r = spec.readiness
    return (
        getattr(liveness, "http", None) == r.http
        and getattr(liveness, "tcp", None) == r.tcp
        and getattr(liveness, "exec", None) == r.exec
        and getattr(liveness, "interval", None) == r.interval
    )
