"""Fake processes for the in-memory runtime: a ``MemoryWorld`` that outlives runtimes.

The world plays the machine: it holds processes (pid, start time, parent, session, whether
they answer their probes, what they cost) and the runtime's pid files. A ``MemoryRuntime``
over it starts and watches processes; a second one over the same world adopts what the
first left running, as a restarted controller does. Tests drive the world with its hooks
(``crash``, ``set_ready``, ``set_live``, ``set_usage``, ``behave``, ``spawn``) and read it
(``process_of``, ``alive``), never with a sleep.

Signals mean what they mean on Linux, as far as the controller can tell: SIGKILL ends a
process (even a stopped one) with code -9; SIGTERM and SIGINT end it with its
``term_exit_code`` (by default killed by the signal; 0 for one that drains) unless it
ignores them, and wait while it is stopped;
SIGSTOP stops it (it answers no probe) until SIGCONT; every other signal is only recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alwayson.runtime.base import InstanceSpec
from alwayson.runtime.processes import ProcessRef, same_start, write_pid_file
from alwayson.util.clocks import Clock
from alwayson.util.errors import NotFoundError

DEFAULT_RSS = 32 * 1024 * 1024
TERMINATING = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Behaviour:
    """How the processes of one instance id behave (set with ``MemoryWorld.behave``)."""

    ready: bool = True  # answers its readiness probe
    live: bool = True  # answers its own liveness probe (when the spec has one)
    ignores_sigterm: bool = False
    term_exit_code: int = -signal.SIGTERM  # no handler: killed by it; 0 for one that drains
    start_error: str | None = None  # the command cannot run: start raises PermanentError
    dies_at_start: int | None = None  # exits with this code on its first loop turn
    hands_over: bool = True  # a successor started by replace makes it exit
    children_in_own_session: int = 0  # like a database agent starting PostgreSQL
    cpu_seconds: float = 0.0
    rss_bytes: int = DEFAULT_RSS


@dataclass(eq=False)
class FakeProcess:
    pid: int
    start_time: float
    argv: list[str]
    parent: int | None
    group: int  # process group (= session leader's pid here)
    ready: bool
    live: bool
    ignores_sigterm: bool
    term_exit_code: int
    cpu_seconds: float
    rss_bytes: int
    exit_code: int | None = None
    running: bool = True
    stopped: bool = False
    signals: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    watchers: list[Callable[[FakeProcess], None]] = field(default_factory=list)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start_time)

    def answers_readiness(self) -> bool:
        return self.running and not self.stopped and self.ready

    def answers_liveness(self) -> bool:
        return self.running and not self.stopped and self.live

    def probe_detail(self) -> str:
        if self.stopped:
            return "timed out (process stopped)"
        return "answered" if self.ready else "refused"

    async def changed(self) -> None:
        """Wait until something about this process changes (a hook, a signal, its exit)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


@dataclass(frozen=True)
class PidRecord:
    """What the local runtime keeps in ``run/instances/ID.json``."""

    spec: InstanceSpec
    pid: int
    start_time: float
    started_at: float


class MemoryWorld:
    def __init__(self, clock: Clock, log_dir: Path | None = None, first_pid: int = 1000) -> None:
        self.clock = clock
        self.log_dir = log_dir
        self.processes: dict[int, FakeProcess] = {}
        self.records: dict[str, PidRecord] = {}
        self.behaviours: dict[str, Behaviour] = {}
        self._pids = itertools.count(first_pid)
        self._owner: dict[int, str] = {}  # pid → instance id, for the hooks by id

    # ---------------------------------------------------------------- hooks by id

    def behave(self, instance_id: str, **changes: object) -> Behaviour:
        """Set how the next processes of ``instance_id`` behave (fields of ``Behaviour``)."""
        current = self.behaviours.get(instance_id, Behaviour())
        updated = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        self.behaviours[instance_id] = updated
        return updated

    def process_of(self, instance_id: str) -> FakeProcess:
        """The newest running process started for ``instance_id``."""
        for pid in sorted(self.processes, reverse=True):
            proc = self.processes[pid]
            if proc.running and self._owner.get(pid) == instance_id:
                return proc
        raise NotFoundError(f"no running process of {instance_id!r}")

    def crash(self, instance_id: str, exit_code: int = 1) -> None:
        self.exit(self.process_of(instance_id).pid, exit_code)

    def set_ready(self, instance_id: str, ready: bool) -> None:
        """Make the running process answer its readiness probe, or stop answering."""
        proc = self.process_of(instance_id)
        proc.ready = ready
        proc.notify()

    def set_live(self, instance_id: str, live: bool) -> None:
        """Make the running process answer its own liveness probe, or stop answering."""
        proc = self.process_of(instance_id)
        proc.live = live
        proc.notify()

    def set_usage(self, instance_id: str, cpu_seconds: float, rss_bytes: int) -> None:
        proc = self.process_of(instance_id)
        proc.cpu_seconds, proc.rss_bytes = cpu_seconds, rss_bytes

    # ---------------------------------------------------------------- processes

    def spawn(
        self,
        argv: list[str],
        *,
        parent: int | None = None,
        new_session: bool = True,
        instance_id: str | None = None,
    ) -> FakeProcess:
        """A new process; a child of ``parent`` in its group unless ``new_session``."""
        how = self.behaviours.get(instance_id or "", Behaviour())
        pid = next(self._pids)
        group = pid
        if not new_session and parent is not None and parent in self.processes:
            group = self.processes[parent].group
        proc = FakeProcess(
            pid=pid,
            start_time=self.clock.wall(),
            argv=list(argv),
            parent=parent,
            group=group,
            ready=how.ready,
            live=how.live,
            ignores_sigterm=how.ignores_sigterm,
            term_exit_code=how.term_exit_code,
            cpu_seconds=how.cpu_seconds,
            rss_bytes=how.rss_bytes,
        )
        self.processes[pid] = proc
        if instance_id is not None:
            self._owner[pid] = instance_id
        for _ in range(how.children_in_own_session):
            self.spawn([*argv, "(child)"], parent=pid)
        if how.dies_at_start is not None:
            code = how.dies_at_start
            asyncio.get_running_loop().call_soon(self.exit, pid, code)
        return proc

    def take_over(self, predecessor: int, successor: int) -> None:
        """What a successor started by replace does: once it runs (next loop turn), the
        predecessor hands its sockets over and exits 0, if it knows how."""

        def hand_over() -> None:
            old, new = self.processes.get(predecessor), self.processes.get(successor)
            if old is None or new is None or not new.running or not old.running:
                return
            behaviour = self.behaviours.get(self._owner.get(predecessor, ""), Behaviour())
            if behaviour.hands_over:
                self.exit(predecessor, 0)

        asyncio.get_running_loop().call_soon(hand_over)

    def children_of(self, pid: int) -> list[int]:
        return [p.pid for p in self.processes.values() if p.running and p.parent == pid]

    def alive(self, pid: int, start_time: float | None = None) -> bool:
        proc = self.processes.get(pid)
        return proc is not None and proc.running and same_start(proc.start_time, start_time)

    def group_of(self, pid: int) -> list[int]:
        return [p.pid for p in self.processes.values() if p.running and p.group == pid]

    def descendants(self, pid: int) -> list[int]:
        found: list[int] = []
        frontier = [pid]
        while frontier:
            parent = frontier.pop()
            for proc in self.processes.values():
                if proc.running and proc.parent == parent and proc.pid not in found:
                    found.append(proc.pid)
                    frontier.append(proc.pid)
        return found

    def deliver(self, pid: int, signum: int) -> bool:
        """Send ``signum`` to ``pid``; False when there is no such running process."""
        proc = self.processes.get(pid)
        if proc is None or not proc.running:
            return False
        if signum == 0:
            return True
        proc.signals.append(signum)
        if signum == signal.SIGKILL:
            self.exit(pid, -signal.SIGKILL)
        elif signum == signal.SIGSTOP:
            proc.stopped = True
        elif signum == signal.SIGCONT:
            proc.stopped = False
            pending, proc.pending = proc.pending, []
            for held in pending:
                self.deliver(pid, held)
        elif signum in TERMINATING:
            if proc.stopped:
                proc.pending.append(signum)
            elif not proc.ignores_sigterm:
                self.exit(pid, proc.term_exit_code)
        proc.notify()
        return True

    def exit(self, pid: int, code: int) -> None:
        """The process ends with ``code`` (negative: killed by that signal); its children
        are re-parented, and whoever watches it hears of it on the next loop turn."""
        proc = self.processes.get(pid)
        if proc is None or not proc.running:
            return
        proc.running, proc.exit_code, proc.stopped = False, code, False
        for child in self.processes.values():
            if child.parent == pid:
                child.parent = None
        loop = asyncio.get_running_loop()
        for watcher in list(proc.watchers):
            loop.call_soon(watcher, proc)
        proc.notify()

    # ---------------------------------------------------------------- files

    def log_path(self, site: str, instance_id: str) -> Path:
        return (self.log_dir or Path("memory-logs")) / site / f"{instance_id}.log"

    def write_log(self, path: Path, line: str) -> None:
        """Append to a log file when the world has a folder for them (tests that read
        logs give one); otherwise logs are not kept."""
        if self.log_dir is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(line + "\n")


class MemoryProcesses:
    """The ``Processes`` port over a ``MemoryWorld``."""

    def __init__(self, world: MemoryWorld) -> None:
        self.world = world

    def alive(self, pid: int, start_time: float | None) -> bool:
        return self.world.alive(pid, start_time)

    def signal(self, pid: int, start_time: float | None, signum: int) -> bool:
        return self.world.alive(pid, start_time) and self.world.deliver(pid, signum)

    def signal_tree(self, pid: int, start_time: float | None, signum: int) -> list[int]:
        if not self.world.alive(pid, start_time):
            return []
        targets = [pid, *self.world.descendants(pid)]
        return [target for target in targets if self.world.deliver(target, signum)]

    def start_detached(self, argv: list[str], log_path: Path, pid_file: Path) -> ProcessRef:
        proc = self.world.spawn(argv)
        stamp = self.world.clock.wall()
        self.world.write_log(log_path, f"--- {stamp:.0f} alwayson: starting {' '.join(argv)}")
        write_pid_file(pid_file, proc.ref)
        return proc.ref
