"""The ``Processes`` port: processes that are not instances.

The controller runs a few processes that no ``Runtime`` manages (a drill's runner) and
must kill some it did not start (PostgreSQL, found by its ``postmaster.pid``). It does so
through this port, never with ``os.kill`` or psutil, so it can be tested in memory
(``memory.MemoryProcesses``) and run on a host (``local_processes.LocalProcesses``).

A process is identified by its pid *and* its start time: a pid alone may have been reused
by the time we look again. A zombie counts as dead. Foreign errors (psutil.Error,
ProcessLookupError, PermissionError) never leave an implementation: a process that is gone
or not ours is simply not alive, and a signal it did not get is not in the returned list.

This module imports nothing that touches processes, so the fakes can use its helpers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# psutil's create_time is rounded differently from what /proc gives on a second read.
START_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class ProcessRef:
    """A process by identity: pid and start time (seconds since the epoch)."""

    pid: int
    start_time: float


class Processes(Protocol):
    def alive(self, pid: int, start_time: float | None) -> bool:
        """True when ``pid`` runs, is not a zombie and (if given) started at ``start_time``."""
        ...

    def signal(self, pid: int, start_time: float | None, signum: int) -> bool:
        """Send ``signum`` to ``pid`` alone, if it is the process of ``start_time``;
        whether it went out."""
        ...

    def signal_tree(self, pid: int, start_time: float | None, signum: int) -> list[int]:
        """Send ``signum`` to ``pid`` and every descendant (children first seen, then the
        process itself is signalled first so none escapes by forking). Returns the pids
        signalled; nothing when ``pid`` is not the process of ``start_time``."""
        ...

    def start_detached(self, argv: list[str], log_path: Path, pid_file: Path) -> ProcessRef:
        """Start ``argv`` in its own session, stdin from /dev/null, output appended to
        ``log_path``; write ``pid_file`` atomically (``write_pid_file``); reap it when it
        ends without anyone waiting."""
        ...


def write_pid_file(path: Path, ref: ProcessRef) -> None:
    """A pid file as every process the platform starts has one: JSON with the pid and the
    start time, so cleanup (and people) find it by pid, never by name."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": ref.pid, "start_time": ref.start_time}))
    tmp.replace(path)


def read_pid_file(path: Path) -> ProcessRef | None:
    """The process a pid file names; None when the file is absent or unreadable.

    Reads our JSON pid files, and PostgreSQL's ``postmaster.pid`` (pid on the first line,
    no start time we could compare: start time 0.0, pass ``None`` to ``alive``).
    """
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        first = text.split("\n", 1)[0].strip()
        return ProcessRef(int(first), 0.0) if first.isdigit() else None
    if isinstance(record, int):  # a postmaster.pid of one line
        return ProcessRef(record, 0.0)
    try:
        return ProcessRef(int(record["pid"]), float(record["start_time"]))
    except (KeyError, TypeError, ValueError):
        return None


def same_start(actual: float, expected: float | None) -> bool:
    return expected is None or abs(actual - expected) < START_TIME_TOLERANCE
