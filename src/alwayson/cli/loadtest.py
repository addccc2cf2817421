"""``alwayson loadtest``: open- or closed-model load on URLs or a journey, judged by thresholds.

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
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import typer
from rich.table import Table

from alwayson.cli.common import Failed, JsonOpt, _emit_json, _wrap, console, err
from alwayson.loadgen import (
    ArrivalSchedule,
    Check,
    ClosedModel,
    LoadTest,
    LoadTestError,
    OpenModel,
    PacingLimits,
    Request,
    RunResult,
    ThresholdError,
    UrlList,
    all_passed,
    evaluate,
    merge_results,
    parse_thresholds,
    run_load,
    run_workers,
)
from alwayson.loadgen.histograms import REPORTED_PERCENTILES, percentile_name
from alwayson.loadgen.journeys import JourneyError, resolve_journey
from alwayson.loadgen.recording import SecondRow, combine_rows
from alwayson.loadgen.reporting import micros_text, ms_text, render_html, share_text, step_rows
from alwayson.loadgen.results import MemorySample
from alwayson.loadgen.running import run_in_loop
from alwayson.loadgen.scenarios import Journey
from alwayson.loadgen.thresholds import Outcome
from alwayson.util.durations import format_duration, parse_duration

DEFAULT_RATE = 100.0
DEFAULT_DURATION = "30s"
DEFAULT_SNAPSHOT_EVERY = "10m"
MAX_WORKERS = 256


class BadInput(Exception):
    """The command line cannot run as given; the message names the option and the fix."""


# ---------------------------------------------------------------- reading the command line


def _duration(option: str, text: str, *, zero: bool = False) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise BadInput(f"{option}: {exc}") from None
    if seconds <= 0 and not zero:
        raise BadInput(f"{option}: {text!r} is not longer than 0s; write e.g. '30s' or '5m'")
    return seconds


def parse_ramp(text: str) -> list[tuple[float, float]]:
    """``"30s:100,1m:500"`` → ``[(30.0, 100.0), (60.0, 500.0)]``: stages (duration, rate)."""
    stages: list[tuple[float, float]] = []
    for part in (p.strip() for p in text.split(",")):
        duration, sep, rate = part.partition(":")
        if not sep:
            raise BadInput(
                f"--ramp: stage {part!r} is not DURATION:RATE; write e.g. '30s:100,1m:500' "
                "(reach 100/s over 30s, then 500/s over 1m)"
            )
        seconds = _duration("--ramp", duration.strip())
        try:
            target = float(rate.strip().removesuffix("/s"))
        except ValueError:
            raise BadInput(
                f"--ramp: stage {part!r}: {rate.strip()!r} is not a rate per second"
            ) from None
        if not (math.isfinite(target) and target >= 0):
            raise BadInput(f"--ramp: stage {part!r}: a rate is 0 or more per second")
        stages.append((seconds, target))
    return stages


def parse_targets(urls: Sequence[str]) -> tuple[str, list[Request]]:
    """The common origin of ``urls`` and one request per URL (path and query)."""
    origin: str | None = None
    requests = []
    for text in urls:
        try:
            url = urlsplit(text)
            port = url.port
        except ValueError as exc:
            raise BadInput(f"URL {text!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BadInput(
                f"URL {text!r}: needs http:// or https:// and a host, e.g. http://127.0.0.1:8080/"
            )
        default = 80 if url.scheme == "http" else 443
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        here = f"{url.scheme}://{host}" + ("" if port in (None, default) else f":{port}")
        if origin is not None and here != origin:
            raise BadInput(
                f"URL {text!r}: every URL of one test goes to one target ({origin}); "
                "run one loadtest per target"
            )
        origin = here
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        requests.append(Request(path=path, name=f"GET {path}"))
    if origin is None:
        raise BadInput("give the URL(s) to load, or --journey NAME with the target's base URL")
    return origin, requests


def parse_workers(text: str) -> int:
    if text == "auto":
        return _cores()
    try:
        workers = int(text)
    except ValueError:
        raise BadInput(f"--workers: {text!r} is not a number or 'auto'") from None
    if not 1 <= workers <= MAX_WORKERS:
        raise BadInput(f"--workers: {workers} is not between 1 and {MAX_WORKERS}")
    return workers


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Plan:
    """What the command line asks for, checked."""

    test: LoadTest
    workers: int
    target: str
    scenario: str
    model: str
    duration: float


def make_plan(
    urls: Sequence[str],
    journey: str | None,
    rate: float | None,
    ramp: str | None,
    users: int | None,
    duration: str | None,
    think: str,
    workers: str,
    max_in_flight: int,
    timeout: str,
) -> Plan:
    if journey is not None:
        if len(urls) != 1:
            raise BadInput(
                "--journey: give the target's base URL once, e.g. "
                f"alwayson loadtest --journey {journey} http://127.0.0.1:8080"
            )
        target, _ = parse_targets(urls)
        try:
            scenario: Journey = resolve_journey(journey)
        except JourneyError as exc:
            raise BadInput(f"--journey: {exc}") from None
        scenario_text = f"journey {journey}"
    else:
        target, requests = parse_targets(urls)
        scenario = UrlList(requests)
        scenario_text = ", ".join(r.path for r in requests)
    if max_in_flight < 1:
        raise BadInput(f"--max-in-flight: at least 1, not {max_in_flight}")
    request_timeout = _duration("--timeout", timeout)
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise BadInput(f"--rate: a rate is more than 0 per second, not {rate:g}")
    model: OpenModel | ClosedModel
    if users is not None:
        if rate is not None or ramp is not None:
            raise BadInput("--users runs a closed model: leave out --rate and --ramp")
        if users < 1:
            raise BadInput(f"--users: at least 1, not {users}")
        seconds = _duration("--duration", duration or DEFAULT_DURATION)
        model = ClosedModel(users, seconds, _duration("--think", think, zero=True))
        model_text = f"closed: {users} users, think {format_duration(model.think)}"
    elif ramp is not None:
        if duration is not None:
            raise BadInput("--duration does not apply with --ramp: the stages' durations add up")
        schedule = ArrivalSchedule.ramping(parse_ramp(ramp), start_rate=rate or 0.0)
        seconds = schedule.duration
        model = OpenModel(schedule, PacingLimits(max_in_flight=max_in_flight))
        model_text = f"open: ramp from {rate or 0:g}/s through {ramp}"
    else:
        seconds = _duration("--duration", duration or DEFAULT_DURATION)
        per_second = rate if rate is not None else DEFAULT_RATE
        model = OpenModel.constant(per_second, seconds, max_in_flight=max_in_flight)
        model_text = f"open: {per_second:g}/s"
    test = LoadTest(target, scenario, model, timeout=request_timeout)
    count = parse_workers(workers)
    if isinstance(model, ClosedModel) and model.users < count:
        raise BadInput(f"--users {model.users} cannot be split over --workers {count}")
    return Plan(test, count, target, scenario_text, model_text, seconds)


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


def loadtest(
    urls: list[str] = typer.Argument(
        None,
        metavar="URL",
        help="URL(s) to load, all on one target (requests take them in turn); with "
        "--journey, the target's base URL. 'merge FILE...' merges saved results instead.",
        show_default=False,
    ),
    journey: str | None = typer.Option(
        None,
        "--journey",
        help="Run a journey instead of URLs: a built-in name (bank-registration, "
        "bank-registration-readback) or path/to/file.py:function (an async function "
        "taking a session).",
    ),
    rate: float | None = typer.Option(
        None,
        "--rate",
        help=f"Open model: iterations started per second whatever the target does "
        f"(default {DEFAULT_RATE:g}). With --ramp: the rate the ramp starts from (default 0).",
    ),
    ramp: str | None = typer.Option(
        None,
        "--ramp",
        help='Open model with stages DURATION:RATE, e.g. "30s:100,1m:500" (to 100/s over '
        "30s, then to 500/s over 1m). The test lasts the stages' total.",
    ),
    users: int | None = typer.Option(
        None,
        "--users",
        help="Closed model: this many virtual users, each running iterations back to back.",
    ),
    duration: str | None = typer.Option(
        None,
        "--duration",
        help=f"How long, e.g. 30s, 5m, 2h, 1d (default {DEFAULT_DURATION}).",
    ),
    think: str = typer.Option("0s", "--think", help="Closed model: pause between iterations."),
    workers: str = typer.Option(
        "1", "--workers", help="Load-generator processes, or 'auto' for one per core."
    ),
    thresholds: list[str] = typer.Option(
        [],
        "--threshold",
        "-t",
        help="Pass/fail check, repeatable: 'p99 < 200ms', 'error_rate < 0.1%', "
        "'rps >= 500', 'dropped == 0'. A failed one makes the exit code 1.",
    ),
    max_in_flight: int = typer.Option(
        1000,
        "--max-in-flight",
        help="Open model: iterations in progress at most; arrivals beyond are dropped and "
        "counted, never delayed.",
    ),
    timeout: str = typer.Option("10s", "--timeout", help="Per request."),
    soak: bool = typer.Option(
        False,
        "--soak",
        help="A long run (hours, days): snapshots of the figures so far and a rolling "
        "report in --report-dir every --snapshot-every; progress once a minute.",
    ),
    snapshot_every: str | None = typer.Option(
        None,
        "--snapshot-every",
        help=f"With --soak: how often to write a snapshot (default {DEFAULT_SNAPSHOT_EVERY}).",
    ),
    report_dir: Path | None = typer.Option(
        None,
        "--report-dir",
        help="With --soak: the folder for snapshot-NNNN.json and the rolling report.html.",
    ),
    as_json: bool = JsonOpt,
    html: Path | None = typer.Option(
        None, "--html", help="Write a self-contained HTML report to this file."
    ),
    save: Path | None = typer.Option(
        None,
        "--save",
        help="Write the result JSON (with histograms, mergeable with other runs) to this file.",
    ),
    title: str | None = typer.Option(None, "--title", help="Title of the HTML report."),
) -> None:
    """Load a target with an open model (a rate, or ramping stages) or a closed model
    (virtual users), and judge the run by thresholds.

    Talks to the target directly (no controller needed). Latency runs from each
    iteration's intended start, so a slow target cannot hide its queueing; iterations the
    generator could not start in time are counted as dropped. Percentiles to p99.99 come
    from HDR histograms. Exit code: 0 thresholds passed, 1 one failed, 2 bad input, 130
    interrupted (the first Ctrl-C stops the arrivals and still writes the partial result,
    marked interrupted; a second one quits at once).

    Examples:

    `alwayson loadtest http://127.0.0.1:8080/healthz --rate 500 --duration 1m -t 'p99 < 200ms'`

    `alwayson loadtest --journey bank-registration http://127.0.0.1:8080 --ramp 30s:50,2m:200`

    `alwayson loadtest http://127.0.0.1:8080/ --users 50 --workers auto --json`

    `alwayson loadtest http://127.0.0.1:8080/ --rate 200 --duration 24h --soak --report-dir soak`

    Several machines: run one `--save part-N.json` per machine with its share of the
    rate, then `alwayson loadtest merge part-*.json --html report.html` (thresholds apply
    to the merged result).
    """

    def body() -> None:
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
            every = _soak_options(soak, snapshot_every, report_dir)
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

    _wrap(body)


def _soak_options(soak: bool, snapshot_every: str | None, report_dir: Path | None) -> float:
    """Seconds between snapshots; BadInput for soak options that do not go together."""
    if not soak:
        if snapshot_every is not None or report_dir is not None:
            raise BadInput("--snapshot-every and --report-dir go with --soak")
        return _duration("--snapshot-every", DEFAULT_SNAPSHOT_EVERY)
    if report_dir is None:
        raise BadInput("--soak needs --report-dir DIR for its snapshots and rolling report")
    return _duration("--snapshot-every", snapshot_every or DEFAULT_SNAPSHOT_EVERY)


def duration_text(seconds: float) -> str:
    """``30s``, ``5m``, ``1h30m``, ``2d`` for people."""
    if seconds < 3600 or seconds != int(seconds):
        return format_duration(seconds)
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def plan_info(plan: Plan) -> dict[str, str]:
    return {"target": plan.target, "scenario": plan.scenario, "model": plan.model}


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
