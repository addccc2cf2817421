"""Faults: inject, and undo, even after a crash of the drill.

Each fault is written to the run's journal (``faults.json``) *before* it is injected, with
what its undo needs; ``undo`` is idempotent. So whoever finds a journal with faults not
marked undone (the drill on Ctrl-C, or the controller when a drill process died) can put
the platform back: continue a stopped process, restore a lost site, heal a cut link,
remove a slowness, start a killed controller.

A killed process needs no undo: the platform restarts it, which is what the drill
measures; its ``undo`` only waits for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from alwayson.drills.model import JOURNAL_FILE, write_atomic
from alwayson.util.errors import PermanentError, TemporaryError
from alwayson.util.sitelinks import Slowness, read_partitions, write_partitions

CONTROL_DEADLINE = 30.0
"""How long an undo waits for a controller to answer (a new leader is elected in ~4 s)."""
log = logging.getLogger(__name__)


class FaultError(PermanentError):
    """The fault could not be injected (the target is gone, not what it claims to be)."""


class SiteControl(Protocol):
    async def lose_site(self, site: str, drill: str) -> dict[str, Any]: ...

    async def restore_site(self, site: str, drill: str) -> dict[str, Any]: ...

    async def alive(self) -> bool: ...


@dataclass
class Fault:
    """One fault, as the journal keeps it."""

    kind: str  # kill | hang | site-hang | site-loss | partition | slowness | controller-kill
    target: str  # what it hit, for people: "onboarding@jakarta#1", "jakarta", ...
    drill: str
    pid: int | None = None
    create_time: float | None = None
    site: str | None = None
    pairs: list[list[str]] = field(default_factory=list)
    delay: float = 0.0
    jitter: float = 0.0
    partitions_file: str = ""
    restart: list[str] = field(default_factory=list)
    restart_cwd: str = ""
    injected_at: float | None = None
    undone_at: float | None = None
    note: str = ""
    processes: list[list[Any]] = field(default_factory=list)
    """site-hang: [pid, start time, what] of every process stopped."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fault:
        return cls(**raw)


class Journal:
    """The run's faults, rewritten whole (atomically) on every change."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / JOURNAL_FILE
        self.faults: list[Fault] = []
        if self.path.exists():
            self.faults = [Fault.from_dict(f) for f in json.loads(self.path.read_text())]

    def save(self) -> None:
        write_atomic(self.path, json.dumps([f.to_dict() for f in self.faults], indent=2))

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)
        self.save()

    def pending(self) -> list[Fault]:
        return [f for f in self.faults if f.injected_at is not None and f.undone_at is None]


def _same_process(pid: int, create_time: float | None) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.05:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def site_hang(site: str, drill: str, processes: list[tuple[int, str]]) -> Fault:
    """Stop every process of a site at once (SIGSTOP: a datacenter off the network, its
    connections open but silent), each pinned to its start time."""
    pinned: list[list[Any]] = []
    for pid, what in processes:
        with contextlib.suppress(psutil.Error):
            pinned.append([pid, psutil.Process(pid).create_time(), what])
    if not pinned:
        raise FaultError(f"no running process in site {site} to stop")
    return Fault("site-hang", site, drill, site=site, processes=pinned)


def process_fault(kind: str, target: str, drill: str, pid: int) -> Fault:
    """A kill or hang of ``pid``, pinned to its start time so a reused pid is never hit."""
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error as exc:
        raise FaultError(f"{target}: process {pid} is not running ({exc})") from exc
    return Fault(kind, target, drill, pid=pid, create_time=create_time)


async def inject(fault: Fault, journal: Journal, control: SiteControl) -> None:
    """Journal first, then act."""
    fault.injected_at = time.time()
    journal.add(fault)
    try:
        await _act(fault, control)
    except BaseException:
        journal.save()
        raise
    journal.save()


async def _act(fault: Fault, control: SiteControl) -> None:
    if fault.kind in ("kill", "controller-kill", "hang"):
        assert fault.pid is not None
        proc = _same_process(fault.pid, fault.create_time)
        if proc is None:
            raise FaultError(f"{fault.target}: process {fault.pid} is gone")
        sig = signal.SIGSTOP if fault.kind == "hang" else signal.SIGKILL
        fault.injected_at = time.time()
        os.kill(fault.pid, sig)
    elif fault.kind == "site-hang":
        stopped = []
        for pid, create_time, what in fault.processes:
            if _same_process(int(pid), float(create_time)) is not None:
                os.kill(int(pid), signal.SIGSTOP)
                stopped.append(str(what))
        fault.injected_at = time.time()
        fault.note = f"stopped {len(stopped)} processes: {', '.join(stopped)}"
    elif fault.kind == "site-loss":
        assert fault.site is not None
        answer = await control.lose_site(fault.site, fault.drill)
        fault.note = f"killed {len(answer.get('killed', []))} processes"
    elif fault.kind in ("partition", "slowness"):
        _edit_links(fault, add=True)
    else:
        raise FaultError(f"unknown fault kind {fault.kind!r}")


async def undo(fault: Fault, control: SiteControl, journal: Journal | None = None) -> None:
    """Put back what ``fault`` changed; safe to call twice, and after a crash."""
    if fault.undone_at is not None:
        return
    if fault.kind == "hang" and fault.pid is not None:
        if _same_process(fault.pid, fault.create_time) is not None:
            os.kill(fault.pid, signal.SIGCONT)
    elif fault.kind == "site-hang":
        for pid, create_time, _ in fault.processes:
            if _same_process(int(pid), float(create_time)) is not None:
                os.kill(int(pid), signal.SIGCONT)
    elif fault.kind == "site-loss" and fault.site is not None:
        # The leader may have been in the lost site: the next one answers within seconds.
        deadline = time.monotonic() + CONTROL_DEADLINE
        while True:
            try:
                await control.restore_site(fault.site, fault.drill)
                break
            except TemporaryError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    elif fault.kind in ("partition", "slowness"):
        _edit_links(fault, add=False)
    elif fault.kind == "controller-kill" and fault.restart and not await control.alive():
        _restart_controller(fault)
        deadline = time.monotonic() + 60
        while not await control.alive():
            if time.monotonic() > deadline:
                raise FaultError("the controller did not come back within 60 s of its restart")
            await asyncio.sleep(0.1)
    fault.undone_at = time.time()
    if journal is not None:
        journal.save()


def _pairs(fault: Fault) -> list[tuple[str, str]]:
    return [(a, b) for a, b in fault.pairs]


def _edit_links(fault: Fault, add: bool) -> None:
    """Add or remove this fault's cuts or slowness, leaving everyone else's in place."""
    path = Path(fault.partitions_file)
    cut, slow = read_partitions(path)
    mine = {frozenset(p) for p in _pairs(fault)}
    if fault.kind == "partition":
        cut = [p for p in cut if frozenset(p) not in mine]
        if add:
            cut += _pairs(fault)
    else:
        slow = [s for s in slow if frozenset(s.between) not in mine]
        if add:
            slow += [Slowness(p, fault.delay, fault.jitter) for p in _pairs(fault)]
    write_partitions(path, cut, slow)


def _restart_controller(fault: Fault) -> None:
    """Start the controller again, as its supervisor would (own session, log appended)."""
    cwd = Path(fault.restart_cwd) if fault.restart_cwd else None
    log_path = (cwd or Path.cwd()) / "controller.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            fault.restart,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    fault.note = f"restarted the controller as pid {proc.pid}"
    log.info("drill %s: %s", fault.drill, fault.note)


async def undo_all(journal: Journal, control: SiteControl) -> list[str]:
    """Undo every pending fault, newest first; returns the problems (empty when all went)."""
    problems = []
    for fault in reversed(journal.pending()):
        try:
            await undo(fault, control, journal)
        except Exception as exc:  # keep undoing the others
            problems.append(f"undo {fault.kind} {fault.target}: {exc}")
    return problems
