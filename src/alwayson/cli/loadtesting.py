"""What ``alwayson loadtest`` runs: open- or closed-model load on URLs or a journey, judged
by thresholds. The command's options live in ``cli/loadtest.py``, which imports this module
(and with it the load generator, numpy and psutil) only when a load test runs.

A client tool: it talks to the target directly, not to the controller. Exit codes: 0 every
threshold passed (or none was set), 1 a threshold failed (or the generator failed), 2 bad
input, 130 interrupted.

The progress line (stderr, once a second; once a minute in a soak) is built from the rows
the run hands out as each second completes (``on_second``), merged across worker
processes: exact counts and the p99 of that second, from the intended start.

Ctrl-C: the first stops the arrivals (forwarded to the worker processes by pid), the run
drains its requests in flight (bounded by the request timeout), the partial result is
shown and written (--json, --save, --html, the soak's last snapshot), marked
``interrupted``, and the exit code is 130. A second Ctrl-C quits at once.

``alwayson loadtest merge FILE...`` merges results saved with --save (runs on several
machines) and judges, shows and writes the merge like a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.table import Table

from alwayson.cli.common import Failed, _emit_json, console, err
from alwayson.cli.loadplanning import (
    BadInput,
    Plan,
    duration_text,
    make_plan,
    plan_info,
    soak_options,
)
from alwayson.loadgen import (
    Check,
    LoadTest,
    LoadTestError,
    RunResult,
    ThresholdError,
    all_passed,
    evaluate,
    merge_results,
    parse_thresholds,
    run_load,
    run_workers,
)
from alwayson.loadgen.histograms import REPORTED_PERCENTILES, percentile_name
from alwayson.loadgen.recording import SecondRow, combine_rows
from alwayson.loadgen.reporting import micros_text, ms_text, render_html, share_text, step_rows
from alwayson.loadgen.results import MemorySample
from alwayson.loadgen.running import run_in_loop
from alwayson.loadgen.thresholds import Outcome

# ---------------------------------------------------------------- progress


class Progress:
    """One line on stderr per completed second (or per ``every`` seconds), built from the
    rows the run hands out (``on_second``): exact counts, the p99 of that second."""

    def __init__(self, plan: Plan, every: int = 1, quiet: bool = False) -> None:
        self.plan = plan
        self.every = every
        self.quiet = quiet
        self.started = time.time()
        self.sent = self.ok = self.failed = self.dropped = 0
        self.rows: list[SecondRow] = []
        self.seen = 0  # seconds handed out so far

    def __call__(self, row: SecondRow) -> None:
        self.sent += row.sent
        self.ok += row.ok
        self.failed += row.failed
        self.dropped += row.dropped
        self.seen += 1
        self.rows.append(row)
        if row.end % self.every == 0:
            self.show()

    def show(self) -> None:
        rows, self.rows = self.rows, []
        if self.quiet or not rows:
            return
        combined = combine_rows(rows, rows[0].second, len(rows))
        assert combined is not None
        elapsed = min(max(rows[-1].end - self.started, 0.0), self.plan.duration)
        per = "s" if len(rows) == 1 else f"{len(rows)}s"
        p99 = micros_text(combined.p99_us) if combined.p99_us is not None else "—"
        err.print(
            f"{elapsed:5.0f}s/{self.plan.duration:.0f}s  sent {self.sent:,} "
            f"({combined.sent // len(rows):,}/s)  ok {self.ok:,}  failed {self.failed:,}  "
            f"dropped {self.dropped:,}  p99 (last {per}) {p99}",
            markup=False,
            highlight=False,
        )


class Interrupts:
    """Ctrl-C: the first stops the arrivals (the run drains and returns its partial
    result), the second ends everything at once (KeyboardInterrupt)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.presses = 0
        self.stop = threading.Event()  # for the worker processes' parent
        self.on_first: list[Callable[[], None]] = []

    def press(self) -> None:
        self.presses += 1
        if self.presses > 1:
            raise KeyboardInterrupt
        self.stop.set()
        for call in self.on_first:
            call()
        err.print(
            "stopping: no new arrivals; waiting for the requests in flight "
            "(Ctrl-C again to quit at once)",
            markup=False,
            highlight=False,
        )

    def handler(self, _signum: int, _frame: object) -> None:
        self.press()


class Soak:
    """Snapshots of a long run: ``DIR/snapshot-NNNN.json`` (the figures so far) and a
    rolling ``DIR/report.html``, written by a thread so the run's loop never waits on
    them, with the generator's resident memory (all its processes) at each one."""

    def __init__(
        self, directory: Path, plan: Plan, checks: Sequence[Check], title: str, quiet: bool
    ) -> None:
        self.directory = directory
        self.plan = plan
        self.checks = list(checks)
        self.title = title
        self.quiet = quiet
        self.memory: list[MemorySample] = []
        self.count = 0
        self.failure: str | None = None
        self._queue: queue.Queue[tuple[int, RunResult] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_all, name="soak-writer")

    def __enter__(self) -> Soak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()

    def snapshot(self, result: RunResult) -> None:
        """Called by the run (its loop, or the workers' parent): quick, hands off."""
        self.count += 1
        self.memory.append(generator_memory(self.count))
        result.memory = list(self.memory)
        self._queue.put((self.count, result))

    def final(self, result: RunResult) -> Path:
        """The last snapshot (the whole run), written at once; its path. Worker processes
        have ended by then, so only a one-process run measures its memory again."""
        self.count += 1
        if self.plan.workers == 1:
            self.memory.append(generator_memory(self.count))
        result.memory = list(self.memory)
        return self._write(self.count, result)

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._write(*item)
            except OSError as exc:
                self.failure = f"cannot write to {self.directory}: {exc.strerror}"

    def _write(self, number: int, result: RunResult) -> Path:
        outcomes = evaluate(self.checks, result)
        path = self.directory / f"snapshot-{number:04d}.json"
        data = result_json(result, plan_info(self.plan), outcomes, self.title)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(data) + "\n", encoding="utf-8")
        temporary.replace(path)
        page = render_html(result, self.title, outcomes, details(self.plan, result, number))
        report = self.directory / "report.html"
        temporary = report.with_suffix(".html.tmp")
        temporary.write_text(page, encoding="utf-8")
        temporary.replace(report)
        if not self.quiet:
            rss = result.memory[-1].rss_bytes / 2**20 if result.memory else 0.0
            err.print(
                f"snapshot {number} written to {path} ({result.sent:,} sent so far, "
                f"generator RSS {rss:.1f} MiB)",
                markup=False,
                highlight=False,
            )
        return path


def generator_memory(snapshot: int) -> MemorySample:
    """Resident memory of this process and its children (the worker processes)."""
    me = psutil.Process()
    procs = [me]
    with contextlib.suppress(psutil.Error):
        procs += me.children(recursive=True)
    total = 0
    counted = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
            counted += 1
    return MemorySample(snapshot, time.time(), total, counted)


def details(plan: Plan, result: RunResult, snapshot: int | None = None) -> dict[str, str]:
    out = {
        "target": plan.target,
        "scenario": plan.scenario,
        "model": plan.model,
        "processes": str(result.workers),
    }
    if snapshot is not None:
        out["snapshot"] = f"{snapshot} (rolling report of a soak run still going)"
    if result.interrupted:
        out["interrupted"] = "yes: stopped by Ctrl-C; the figures cover the run until then"
    return out


# ---------------------------------------------------------------- running and showing


@dataclass
class Live:
    """What the run reports while it goes: progress lines, soak snapshots, Ctrl-C."""

    progress: Progress
    interrupts: Interrupts
    soak: Soak | None = None
    snapshot_every: float = 600.0


def _run(plan: Plan, live: Live) -> RunResult:
    try:
        if plan.workers == 1:
            return _run_one(plan.test, live)
        return _run_many(plan, live)
    except ValueError as exc:  # a split the core refuses
        raise BadInput(f"--workers: {exc}") from None


def _run_one(test: LoadTest, live: Live) -> RunResult:
    async def main() -> RunResult:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        live.interrupts.on_first.append(stop.set)
        loop.add_signal_handler(signal.SIGINT, live.interrupts.press)
        try:
            return await run_load(
                test,
                on_second=live.progress,
                stop=stop,
                on_snapshot=live.soak.snapshot if live.soak else None,
                snapshot_every=live.snapshot_every,
            )
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    return run_in_loop(main)


def _run_many(plan: Plan, live: Live) -> RunResult:
    previous = signal.signal(signal.SIGINT, live.interrupts.handler)
    try:
        return run_workers(
            plan.test,
            plan.workers,
            on_second=live.progress,
            stop=live.interrupts.stop,
            on_snapshot=live.soak.snapshot if live.soak else None,
            snapshot_every=live.snapshot_every,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def result_json(
    result: RunResult, info: dict[str, str], outcomes: Sequence[Outcome], title: str
) -> dict[str, Any]:
    """The result (with histograms, so it can be merged) and how it was judged."""
    return {
        **result.to_json(),
        "title": title,
        **info,
        "thresholds": [
            {
                "threshold": o.check.expression,
                "actual": o.actual,
                "unit": o.check.unit,
                "passed": o.passed,
                "text": str(o),
            }
            for o in outcomes
        ],
        "passed": all_passed(outcomes),
    }


def print_summary(result: RunResult, outcomes: Sequence[Outcome]) -> None:
    totals = Table(
        "sent",
        "ok",
        "failed",
        "error rate",
        "dropped",
        "requests",
        "req/s",
        "it/s",
        title=f"{result.duration:.1f}s, {result.workers} process(es)",
    )
    totals.add_row(
        f"{result.sent:,}",
        f"{result.ok:,}",
        f"{result.failed:,}",
        share_text(result.error_rate if result.finished else None),
        f"{result.dropped:,}",
        f"{result.requests:,}",
        f"{result.rps:,.1f}",
        f"{result.iterations_per_s:,.1f}",
    )
    console.print(totals)
    names = ["min", *(percentile_name(p) for p in REPORTED_PERCENTILES), "max"]
    found = result.latency.percentiles_us(REPORTED_PERCENTILES)
    values = [result.latency.min_us(), *(found[p] for p in REPORTED_PERCENTILES)]
    latency = Table(*names, title="latency of whole iterations (from the intended start)")
    latency.add_row(*(micros_text(v) for v in [*values, result.latency.max_us()]))
    console.print(latency)
    steps = Table("step", "requests", "ok", "failed", "p50", "p99", "p99.99", "max", "errors")
    for row in step_rows(result):
        steps.add_row(
            row.name,
            f"{row.requests:,}",
            f"{row.ok:,}",
            f"{row.failed:,}",
            ms_text(row.p50_ms),
            ms_text(row.p99_ms),
            ms_text(row.p9999_ms),
            ms_text(row.max_ms),
            row.errors or "-",
        )
    console.print(steps)
    if result.journey_errors:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.journey_errors.items()))
        console.print(f"errors raised by the journey: {kinds}", markup=False)


def print_outcomes(outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        colour = "green" if outcome.passed else "red"
        err.print(f"[{colour}]threshold {outcome}[/{colour}]", highlight=False)


def _hint(result: RunResult, target: str) -> None:
    """Say plainly when nothing worked, with the commonest error kinds."""
    if result.ok or not result.failed:
        return
    kinds: dict[str, int] = {}
    for step in result.steps.values():
        for kind, n in step.errors.items():
            kinds[kind] = kinds.get(kind, 0) + n
    for kind, n in result.journey_errors.items():
        kinds[kind] = kinds.get(kind, 0) + n
    common = ", ".join(f"{k} ({n})" for k, n in sorted(kinds.items(), key=lambda x: -x[1])[:3])
    err.print(
        f"[yellow]no iteration succeeded against {target}: {common}. "
        "Is the target running and the URL right?[/yellow]",
        highlight=False,
    )


def _write(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        err.print(f"error: cannot write the {what} to {path}: {exc.strerror}", markup=False)
        raise Failed(1) from None


# ---------------------------------------------------------------- the command


def run_loadtest(
    urls: Sequence[str],
    journey: str | None,
    rate: float | None,
    ramp: str | None,
    users: int | None,
    duration: str | None,
    think: str,
    workers: str,
    thresholds: Sequence[str],
    max_in_flight: int,
    timeout: str,
    soak: bool,
    snapshot_every: str | None,
    report_dir: Path | None,
    as_json: bool,
    html: Path | None,
    save: Path | None,
    title: str | None,
) -> None:
    """What ``alwayson loadtest`` does once its options are read (``cli/loadtest.py``);
    raises Failed with the exit code when it does not end with 0."""
    try:
        checks = parse_thresholds(thresholds)
    except ThresholdError as exc:
        err.print(f"error: --threshold: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise Failed(2) from None
    if urls and urls[0] == "merge":
        _merge(urls[1:], checks, as_json, html, save, title)
        return
    try:
        plan = make_plan(
            urls or [],
            journey,
            rate,
            ramp,
            users,
            duration,
            think,
            workers,
            max_in_flight,
            timeout,
        )
        every = soak_options(soak, snapshot_every, report_dir)
    except BadInput as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise Failed(2) from None
    name = title or f"{plan.scenario} on {plan.target}"
    if not as_json:
        soaking = f"; soak: snapshots every {duration_text(every)} in {report_dir}"
        err.print(
            f"loading {plan.target} ({plan.scenario}) for {duration_text(plan.duration)}, "
            f"{plan.model}, {plan.workers} process(es)" + (soaking if soak else ""),
            markup=False,
            highlight=False,
        )
    live = Live(
        Progress(plan, every=60 if soak else 1, quiet=as_json),
        Interrupts(quiet=as_json),
        snapshot_every=every,
    )
    with contextlib.ExitStack() as stack:
        if soak:
            assert report_dir is not None
            try:
                report_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                err.print(f"error: --report-dir {report_dir}: {exc.strerror}", markup=False)
                raise Failed(2) from None
            live.soak = stack.enter_context(Soak(report_dir, plan, checks, name, as_json))
        try:
            result = _run(plan, live)
        except BadInput as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise Failed(2) from None
        except LoadTestError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise Failed(1) from None
        except KeyboardInterrupt:
            err.print("interrupted again: quit at once, no result written")
            raise Failed(130) from None
    live.progress.show()
    written: list[tuple[Path, str]] = []
    if live.soak is not None:
        if live.soak.failure:
            err.print(f"error: soak snapshots: {live.soak.failure}", markup=False)
        written.append((live.soak.final(result), "final snapshot"))
    _finish(result, plan_info(plan), checks, name, as_json, html, save, written)


def _finish(
    result: RunResult,
    info: dict[str, str],
    checks: Sequence[Check],
    name: str,
    as_json: bool,
    html: Path | None,
    save: Path | None,
    written: list[tuple[Path, str]],
) -> None:
    """Judge, write and show a result; the exit code (130 when it was interrupted)."""
    outcomes = evaluate(checks, result)
    data = result_json(result, info, outcomes, name)
    if save is not None:
        _write(save, json.dumps(data, indent=2) + "\n", "result")
        written.append((save, "result"))
    if html is not None:
        shown = {**info, "processes": str(result.workers)}
        if result.interrupted:
            shown["interrupted"] = "yes: stopped by Ctrl-C; the figures cover the run until then"
        _write(html, render_html(result, name, outcomes, shown), "HTML report")
        written.append((html, "report"))
    if as_json:
        _emit_json(data)
    else:
        print_summary(result, outcomes)
    _hint(result, info["target"])
    print_outcomes(outcomes)
    for path, what in written:
        if not as_json:
            err.print(f"{what} written to {path}", markup=False, highlight=False)
    if result.interrupted:
        err.print("[yellow]interrupted: the figures cover the run until Ctrl-C[/yellow]")
        raise Failed(130)
    if not all_passed(outcomes):
        failed = sum(1 for o in outcomes if not o.passed)
        err.print(f"[red]{failed} of {len(outcomes)} threshold(s) failed[/red]")
        raise Failed(1)


def _merge(
    files: Sequence[str],
    checks: Sequence[Check],
    as_json: bool,
    html: Path | None,
    save: Path | None,
    title: str | None,
) -> None:
    """``alwayson loadtest merge FILE...``: saved results of runs side by side, as one."""
    if not files:
        err.print("error: merge: give the saved results (--save) to merge", markup=False)
        raise Failed(2)
    parts: list[RunResult] = []
    infos: list[dict[str, Any]] = []
    for name in files:
        try:
            data = json.loads(Path(name).read_text(encoding="utf-8"))
            parts.append(RunResult.from_json(data))
        except OSError as exc:
            err.print(f"error: merge: cannot read {name}: {exc.strerror}", markup=False)
            raise Failed(2) from None
        except (ValueError, TypeError, AttributeError) as exc:
            err.print(f"error: merge: {name}: {exc}", markup=False, highlight=False)
            raise Failed(2) from None
        infos.append(data)
    info = {}
    for key in ("target", "scenario", "model"):
        values = sorted({str(d.get(key, "unknown")) for d in infos})
        info[key] = values[0] if len(values) == 1 else "; ".join(values)
    name = title or str(infos[0].get("title") or f"{info['scenario']} on {info['target']}")
    result = merge_results(parts)
    if not as_json:
        err.print(f"merged {len(parts)} result(s): {', '.join(files)}", markup=False)
    _finish(result, info, checks, name, as_json, html, save, [])
