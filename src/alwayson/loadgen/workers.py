"""Several load-generator processes on one machine, merged into one result.

``run_workers(test, n)`` starts n processes. Each takes every n-th arrival of the open
model's schedule (so together they send exactly the single-process schedule, interleaved,
not n bursts at once) or its share of the closed model's users, and a share of the
in-flight bound and the connection pool. All start at one instant (the system-wide
monotonic clock, after every process has said it is ready) and send back their results
as JSON with encoded histograms, which are merged exactly.

Live figures: with ``on_second`` every worker sends each completed second's row as it is
handed out, and the parent calls ``on_second`` with the merged row of a second once every
worker is past it (exact, as for one process). With ``on_snapshot`` every worker sends its
figures so far every ``snapshot_every`` seconds and the parent hands on their merge.

Stopping early: when ``stop`` (a ``threading.Event``, safe to set from a signal handler)
is set, the parent sends SIGINT to every worker by its pid; a worker takes SIGINT as
"stop the arrivals" (never more, so the terminal's own Ctrl-C to the whole process group
does no harm), drains and sends its partial result, and the parent merges those
(``interrupted``). A KeyboardInterrupt in the parent ends the run at once instead.

Every worker is stopped by its pid when the run ends, fails or is interrupted: SIGTERM,
then SIGKILL after a bound. Call it from synchronous code (not from inside a running event
loop: a forked child would inherit the loop's thread state).

Several machines: run one ``alwayson loadtest --save part.json`` per machine with its share
of the rate, then ``alwayson loadtest merge part*.json`` (``merge_results``); the
per-second rows line up by wall-clock second, so keep the machines' clocks in NTP sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from alwayson.loadgen.recording import SecondRow, combine_rows
from alwayson.loadgen.results import RunResult, merge_results, row_from_json, row_json
from alwayson.loadgen.running import LoadTest, OnSecond, OnSnapshot, OpenModel, run_in_loop
from alwayson.loadgen.running import run_load as _run_load
from alwayson.util.errors import AlwaysonError

READY_TIMEOUT = 30.0
START_LEAD = 0.25  # seconds between "everyone is ready" and the common start
RESULT_GRACE = 30.0  # beyond the test's duration and drain, to build and send results
STOP_GRACE = 2.0  # between SIGTERM and SIGKILL
POLL = 0.1  # how often the parent looks at ``stop`` while it waits


class LoadTestError(AlwaysonError):
    """A load-generator process failed or did not answer in time."""


def run_workers(
    test: LoadTest,
    workers: int,
    *,
    start_method: str = "fork",
    ready_timeout: float = READY_TIMEOUT,
    on_second: OnSecond | None = None,
    stop: threading.Event | None = None,
    on_snapshot: OnSnapshot | None = None,
    snapshot_every: float = 600.0,
    on_started: Callable[[list[int]], None] | None = None,
) -> RunResult:
    """Run ``test`` split over ``workers`` processes; their merged result.

    ``on_started`` is told the workers' pids once they run.
    """
    if workers < 1:
        raise ValueError(f"workers is at least 1, not {workers}")
    for shard in range(workers):
        test.shard(shard, workers)  # refuse a split that cannot work before forking
    context = multiprocessing.get_context(start_method)
    live = _LiveOptions(on_second is not None, on_snapshot is not None, snapshot_every)
    procs: list[BaseProcess] = []
    conns: list[Connection] = []
    finished = False
    try:
        for shard in range(workers):
            mine, theirs = context.Pipe()
            proc = context.Process(  # type: ignore[attr-defined]
                target=_worker,
                args=(test, shard, workers, theirs, live),
                name=f"alwayson-loadgen-{shard}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            procs.append(proc)
            conns.append(mine)
        if on_started is not None:
            on_started([p.pid for p in procs if p.pid is not None])
        ready_by = time.monotonic() + ready_timeout
        for shard, conn in enumerate(conns):
            _receive(conn, ready_by, procs[shard], "ready")
        start_at = time.monotonic() + START_LEAD
        for conn in conns:
            conn.send(("go", start_at))
        duration = (
            test.model.arrivals.duration
            if isinstance(test.model, OpenModel)
            else test.model.duration
        )
        drain = test.timeout if test.drain is None else test.drain
        done_by = start_at + duration + drain + RESULT_GRACE
        gathering = _Gathering(workers, on_second, on_snapshot)
        results = _collect(conns, procs, done_by, gathering, stop, drain)
        finished = True
        return merge_results(results)
    finally:
        for conn in conns:
            conn.close()
        stop_processes(procs, grace=STOP_GRACE if finished else 0.0)


@dataclass(frozen=True)
class _LiveOptions:
    seconds: bool
    snapshots: bool
    snapshot_every: float


@dataclass
class _Gathering:
    """Merges what the workers send as they run: seconds (once every worker is past one)
    and snapshots (once every worker sent its own of that number)."""

    workers: int
    on_second: OnSecond | None
    on_snapshot: OnSnapshot | None
    past: dict[int, float] = field(default_factory=dict)  # worker: seconds before are sent
    seconds: dict[int, list[SecondRow]] = field(default_factory=dict)
    snapshots: dict[int, list[RunResult]] = field(default_factory=dict)

    def second(self, shard: int, row: SecondRow) -> None:
        self.seconds.setdefault(row.second, []).append(row)
        self.past[shard] = row.second + 1
        self._hand_out()

    def finished(self, shard: int) -> None:
        self.past[shard] = float("inf")
        self._hand_out()

    def _hand_out(self) -> None:
        if len(self.past) < self.workers:
            return
        upto = min(self.past.values())
        for second in sorted(s for s in self.seconds if s < upto):
            merged = combine_rows(self.seconds.pop(second), second, 1)
            if merged is not None and self.on_second is not None:
                self.on_second(merged)

    def snapshot(self, number: int, result: RunResult) -> None:
        parts = self.snapshots.setdefault(number, [])
        parts.append(result)
        if len(parts) == self.workers:
            del self.snapshots[number]
            if self.on_snapshot is not None:
                self.on_snapshot(merge_results(parts))


def stop_processes(procs: list[BaseProcess], grace: float = STOP_GRACE) -> None:
    """Give each ``grace`` seconds to exit, then SIGTERM, then SIGKILL, each by its pid."""
    for proc in procs:
        if grace:
            proc.join(timeout=grace)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=STOP_GRACE)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=STOP_GRACE)


def _collect(
    conns: list[Connection],
    procs: list[BaseProcess],
    deadline: float,
    gathering: _Gathering,
    stop: threading.Event | None = None,
    drain: float = 0.0,
) -> list[RunResult]:
    """Every worker's result, taken as they come: the first failure ends the wait. Rows
    and snapshots sent meanwhile go to ``gathering``; a ``stop`` is passed on by pid."""
    results: dict[int, RunResult] = {}
    pending = dict(enumerate(conns))
    forwarded = False
    while pending:
        if stop is not None and stop.is_set() and not forwarded:
            forwarded = True
            for shard in pending:
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(procs[shard].pid, signal.SIGINT)  # type: ignore[arg-type]
            deadline = min(deadline, time.monotonic() + drain + RESULT_GRACE)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            late = ", ".join(f"{procs[k].name} (pid {procs[k].pid})" for k in pending)
            raise LoadTestError(f"load workers sent no result in time: {late}")
        ready = wait(list(pending.values()), timeout=min(remaining, POLL) if stop else remaining)
        for shard, conn in list(pending.items()):
            if conn not in ready:
                continue
            kind, payload = _message(conn, procs[shard])
            if kind == "second":
                gathering.second(shard, row_from_json(payload))
            elif kind == "snapshot":
                number, text = payload
                gathering.snapshot(number, RunResult.from_json(json.loads(text)))
            elif kind == "result":
                results[shard] = RunResult.from_json(payload)
                del pending[shard]
                gathering.finished(shard)
            else:
                raise LoadTestError(f"load worker {procs[shard].name} sent {kind!r}")
    return [results[k] for k in sorted(results)]


def _message(conn: Connection, proc: BaseProcess) -> tuple[str, Any]:
    try:
        kind, payload = conn.recv()
    except EOFError:
        proc.join(timeout=STOP_GRACE)
        raise LoadTestError(
            f"load worker {proc.name} (pid {proc.pid}) exited with {proc.exitcode} "
            f"before sending its result"
        ) from None
    if kind == "error":
        raise LoadTestError(f"load worker {proc.name} (pid {proc.pid}) failed:\n{payload}")
    return str(kind), payload


def _receive(conn: Connection, deadline: float, proc: BaseProcess, expected: str) -> Any:
    if not conn.poll(max(deadline - time.monotonic(), 0.0)):
        raise LoadTestError(f"load worker {proc.name} (pid {proc.pid}) sent no {expected} in time")
    try:
        kind, payload = conn.recv()
    except EOFError:
        proc.join(timeout=STOP_GRACE)
        raise LoadTestError(
            f"load worker {proc.name} (pid {proc.pid}) exited with {proc.exitcode} "
            f"before sending its {expected}"
        ) from None
    if kind == "error":
        raise LoadTestError(f"load worker {proc.name} (pid {proc.pid}) failed:\n{payload}")
    if kind != expected:
        raise LoadTestError(f"load worker {proc.name} sent {kind!r}, expected {expected!r}")
    return payload


def _worker(test: LoadTest, shard: int, shards: int, conn: Connection, live: _LiveOptions) -> None:
    # SIGINT means "stop the arrivals" here, whoever sends it and however often: the parent
    # decides when to give up. Until the run's loop takes it over, a flag remembers it.
    asked = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: asked.set())
    try:
        conn.send(("ready", None))
        kind, start_at = conn.recv()
        if kind != "go":
            return
        snapshots = [0]

        def on_second(row: SecondRow) -> None:
            conn.send(("second", row_json(row)))

        def on_snapshot(result: RunResult) -> None:
            snapshots[0] += 1
            conn.send(("snapshot", (snapshots[0], json.dumps(result.to_json()))))

        async def run() -> RunResult:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, stop.set)
            if asked.is_set():
                stop.set()
            return await _run_load(
                test.shard(shard, shards),
                shard=shard,
                shards=shards,
                start_at=start_at,
                on_second=on_second if live.seconds else None,
                stop=stop,
                on_snapshot=on_snapshot if live.snapshots else None,
                snapshot_every=live.snapshot_every,
            )

        result = run_in_loop(run)
        conn.send(("result", result.to_json()))
    except (EOFError, BrokenPipeError):
        pass  # the parent gave up on us; nothing to report to
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
