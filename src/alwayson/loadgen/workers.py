"""Several load-generator processes on one machine, merged into one result.

``run_workers(test, n)`` starts n processes. Each takes every n-th arrival of the open
model's schedule (so together they send exactly the single-process schedule, interleaved,
not n bursts at once) or its share of the closed model's users, and a share of the
in-flight bound and the connection pool. All start at one instant (the system-wide
monotonic clock, after every process has said it is ready) and send back their results
as JSON with encoded histograms, which are merged exactly.

Every worker is stopped by its pid when the run ends, fails or is interrupted: SIGTERM,
then SIGKILL after a bound. Call it from synchronous code (not from inside a running event
loop: a forked child would inherit the loop's thread state).

Several machines: run one ``alwayson loadtest --json`` per machine with its share of the
rate, then merge the JSON files with ``merge_results(RunResult.from_json(...) …)``; the
per-second rows line up by wall-clock second, so keep the machines' clocks in NTP sync.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from alwayson.loadgen.results import RunResult, merge_results
from alwayson.loadgen.running import LoadTest, OpenModel, run_load_sync
from alwayson.util.errors import AlwaysonError

READY_TIMEOUT = 30.0
START_LEAD = 0.25  # seconds between "everyone is ready" and the common start
RESULT_GRACE = 30.0  # beyond the test's duration and drain, to build and send results
STOP_GRACE = 2.0  # between SIGTERM and SIGKILL


class LoadTestError(AlwaysonError):
    """A load-generator process failed or did not answer in time."""


def run_workers(
    test: LoadTest,
    workers: int,
    *,
    start_method: str = "fork",
    ready_timeout: float = READY_TIMEOUT,
) -> RunResult:
    """Run ``test`` split over ``workers`` processes; their merged result."""
    if workers < 1:
        raise ValueError(f"workers is at least 1, not {workers}")
    for shard in range(workers):
        test.shard(shard, workers)  # refuse a split that cannot work before forking
    context = multiprocessing.get_context(start_method)
    procs: list[BaseProcess] = []
    conns: list[Connection] = []
    finished = False
    try:
        for shard in range(workers):
            mine, theirs = context.Pipe()
            proc = context.Process(  # type: ignore[attr-defined]
                target=_worker,
                args=(test, shard, workers, theirs),
                name=f"alwayson-loadgen-{shard}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            procs.append(proc)
            conns.append(mine)
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
        results = _collect(conns, procs, done_by)
        finished = True
        return merge_results(results)
    finally:
        for conn in conns:
            conn.close()
        stop_processes(procs, grace=STOP_GRACE if finished else 0.0)


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


def _collect(conns: list[Connection], procs: list[BaseProcess], deadline: float) -> list[RunResult]:
    """Every worker's result, taken as they come: the first failure ends the wait."""
    results: dict[int, RunResult] = {}
    pending = dict(enumerate(conns))
    while pending:
        remaining = deadline - time.monotonic()
        ready = wait(list(pending.values()), timeout=max(remaining, 0.0)) if remaining > 0 else []
        if not ready:
            late = ", ".join(f"{procs[k].name} (pid {procs[k].pid})" for k in pending)
            raise LoadTestError(f"load workers sent no result in time: {late}")
        for shard, conn in list(pending.items()):
            if conn in ready:
                data = _receive(conn, deadline, procs[shard], "result")
                results[shard] = RunResult.from_json(data)
                del pending[shard]
    return [results[k] for k in sorted(results)]


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


def _worker(test: LoadTest, shard: int, shards: int, conn: Connection) -> None:
    try:
        conn.send(("ready", None))
        kind, start_at = conn.recv()
        if kind != "go":
            return
        result = run_load_sync(
            test.shard(shard, shards), shard=shard, shards=shards, start_at=start_at
        )
        conn.send(("result", result.to_json()))
    except (EOFError, BrokenPipeError):
        pass  # the parent gave up on us; nothing to report to
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
