"""The ``Processes`` port on this machine (psutil and signals), and the psutil readings
the local runtime shares with it: descendants and CPU/memory usage.

Every foreign error stops here: a process that is gone, a zombie, or one we may not read
or signal is "not alive" / "not signalled", never an exception for the caller.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil

from alwayson.runtime.base import Usage
from alwayson.runtime.processes import ProcessRef, same_start, write_pid_file
from alwayson.util.errors import PermanentError

_GONE = (psutil.Error, ProcessLookupError, PermissionError)


class LocalProcesses:
    def alive(self, pid: int, start_time: float | None) -> bool:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return same_start(proc.create_time(), start_time)
        except (*_GONE, ValueError):
            return False

    def find_by_env(self, name: str, value: str) -> tuple[int, float] | None:
        """The pid and start time of the live process whose environment holds
        ``name=value`` (a marker only one launch was given); None when there is none."""
        wanted = f"{name}={value}".encode()
        for proc in psutil.process_iter():
            try:
                with open(f"/proc/{proc.pid}/environ", "rb") as env:
                    if wanted not in env.read().split(b"\0"):
                        continue
                if proc.status() != psutil.STATUS_ZOMBIE:
                    return proc.pid, float(proc.create_time())
            except (*_GONE, OSError):
                continue
        return None

    def signal(self, pid: int, start_time: float | None, signum: int) -> bool:
        return self.alive(pid, start_time) and send(pid, signum)

    def signal_tree(self, pid: int, start_time: float | None, signum: int) -> list[int]:
        if not self.alive(pid, start_time):
            return []
        # Found before anything dies: a dead parent's children are re-parented to init.
        targets = [pid, *descendants(pid)]
        return [target for target in targets if send(target, signum)]

    def start_detached(self, argv: list[str], log_path: Path, pid_file: Path) -> ProcessRef:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise PermanentError(f"cannot start {argv[0]!r}: {exc}") from exc
        ref = ProcessRef(proc.pid, start_time_of(proc.pid))
        write_pid_file(pid_file, ref)
        # Our child: reap it when it ends, without anyone (or the event loop) waiting.
        threading.Thread(target=proc.wait, name=f"reap:{proc.pid}", daemon=True).start()
        return ref


def send(pid: int, signum: int) -> bool:
    """``os.kill`` that answers whether the signal went out instead of raising."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def send_group(pid: int, signum: int) -> bool:
    """Signal the process group led by ``pid``; just ``pid`` when the group is not ours."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return send(pid, signum)
    return True


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` now, in any session (empty when it is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except _GONE:
        return []


def start_time_of(pid: int) -> float:
    """When ``pid`` started (seconds since the epoch), as the pid files record it."""
    try:
        return float(psutil.Process(pid).create_time())
    except _GONE:
        return time.time()


def usage_of(pid: int) -> Usage | None:
    """CPU seconds (user + system) and resident memory of ``pid``; None when it is gone,
    a zombie or not ours to read."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cpu = proc.cpu_times()
            rss = proc.memory_info().rss
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
    except _GONE:
        return None
    seconds = cpu.user + cpu.system
    if not math.isfinite(seconds):
        return None
    return Usage(seconds, int(rss))
