"""``alwayson loadtest``: open- or closed-model load on URLs or a journey, judged by thresholds.

A client tool: it talks to the target directly, not to the controller. Exit codes: 0 every
threshold passed (or none was set), 1 a threshold failed (or the generator failed), 2 bad
input, 130 interrupted.

The progress line (stderr, once a second) comes from a thin wrapper around the scenario,
so it sees iterations as they start and end: its p99 runs from each iteration's actual
start (the final figures run from the intended start), and ``dropped`` is inferred from
the schedule (arrivals due more than ``max_lag`` ago that never started), a second late.
Worker processes share their counts through shared memory; the last second's p99 is only
shown for a single process.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.table import Table

from alwayson.cli.common import Failed, JsonOpt, _emit_json, _wrap, console, err
from alwayson.loadgen import (
    ArrivalSchedule,
    ClosedModel,
    LoadTest,
    LoadTestError,
    OpenModel,
    PacingLimits,
    Request,
    RunResult,
    Session,
    ThresholdError,
    UrlList,
    all_passed,
    evaluate,
    parse_thresholds,
    run_load_sync,
    run_workers,
)
from alwayson.loadgen.histograms import REPORTED_PERCENTILES, percentile_name
from alwayson.loadgen.journeys import JourneyError, resolve_journey
from alwayson.loadgen.reporting import micros_text, ms_text, render_html, share_text, step_rows
from alwayson.loadgen.scenarios import Journey
from alwayson.loadgen.thresholds import Outcome
from alwayson.util.durations import format_duration, parse_duration

DEFAULT_RATE = 100.0
DEFAULT_DURATION = "30s"
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
            url = httpx.URL(text)
        except (httpx.InvalidURL, TypeError) as exc:
            raise BadInput(f"URL {text!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise BadInput(
                f"URL {text!r}: needs http:// or https:// and a host, e.g. http://127.0.0.1:8080/"
            )
        here = str(url.copy_with(path="/", query=None, fragment=None)).rstrip("/")
        if origin is not None and here != origin:
            raise BadInput(
                f"URL {text!r}: every URL of one test goes to one target ({origin}); "
                "run one loadtest per target"
            )
        origin = here
        path = url.raw_path.decode("ascii") or "/"
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


class LiveCounts:
    """Iterations started and ended, per process, in shared memory (forked workers write
    their own slot without a lock; a slot is taken once per process under one)."""

    SLOTS = MAX_WORKERS + 1

    def __init__(self) -> None:
        self._counts: Any = multiprocessing.RawArray("q", self.SLOTS * 3)
        self._first: Any = multiprocessing.RawValue("d", 0.0)  # monotonic, system-wide
        self._taken: Any = multiprocessing.Value("i", 0)
        self._pid = -1
        self._slot = 0
        self.latencies: list[float] = []  # this process's, since the last tick

    def _mine(self) -> int:
        if self._pid != os.getpid():
            with self._taken.get_lock():
                self._slot = self._taken.value % self.SLOTS
                self._taken.value += 1
            self._pid = os.getpid()
        return self._slot

    def started(self, now: float) -> None:
        slot = self._mine()
        self._counts[slot * 3] += 1
        if not self._first.value or now < self._first.value:
            self._first.value = now

    def ended(self, ok: bool, seconds: float) -> None:
        self._counts[self._mine() * 3 + (1 if ok else 2)] += 1
        self.latencies.append(seconds)

    def totals(self) -> tuple[int, int, int]:
        counts = list(self._counts)
        return sum(counts[0::3]), sum(counts[1::3]), sum(counts[2::3])

    @property
    def first_start(self) -> float | None:
        return float(self._first.value) or None

    def take_latencies(self) -> list[float]:
        taken, self.latencies = self.latencies, []
        return taken


@dataclass
class Watched:
    """The scenario, counted into ``live`` as each iteration starts and ends."""

    inner: Journey
    live: LiveCounts

    async def __call__(self, session: Session) -> None:
        started = time.monotonic()
        self.live.started(started)
        try:
            await self.inner(session)
        except BaseException:
            self.live.ended(False, time.monotonic() - started)
            raise
        self.live.ended(True, time.monotonic() - started)


class Progress:
    """A thread printing one line a second to stderr until stopped."""

    def __init__(self, live: LiveCounts, plan: Plan) -> None:
        self.live = live
        self.plan = plan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadtest-progress", daemon=True)
        self._due = self._due_offsets()
        self._next_due = next(self._due, None) if self._due is not None else None
        self._due_count = 0
        self._sent_before = 0

    def _due_offsets(self) -> Iterator[float] | None:
        model = self.plan.test.model
        return model.arrivals.offsets() if isinstance(model, OpenModel) else None

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.tick(time.monotonic())

    def dropped(self, now: float, sent: int) -> int:
        """Arrivals due more than ``max_lag`` ago (plus a margin) that never started."""
        start = self.live.first_start
        model = self.plan.test.model
        if self._due is None or start is None or not isinstance(model, OpenModel):
            return 0
        horizon = now - start - model.limits.max_lag - 0.1
        while self._next_due is not None and self._next_due <= horizon:
            self._due_count += 1
            self._next_due = next(self._due, None)
        return max(self._due_count - sent, 0)

    def tick(self, now: float) -> None:
        sent, ok, failed = self.live.totals()
        start = self.live.first_start
        elapsed = 0.0 if start is None else now - start
        p99 = "—"
        if self.plan.workers == 1:
            batch = sorted(self.live.take_latencies())
            if batch:
                p99 = ms_text(batch[min(len(batch) - 1, math.ceil(0.99 * len(batch)) - 1)] * 1000)
        per_second = sent - self._sent_before
        self._sent_before = sent
        err.print(
            f"{elapsed:5.0f}s/{self.plan.duration:.0f}s  sent {sent:,} ({per_second:,}/s)  "
            f"ok {ok:,}  failed {failed:,}  dropped {self.dropped(now, sent):,}  "
            f"p99 (last 1s) {p99}",
            markup=False,
            highlight=False,
        )


# ---------------------------------------------------------------- running and showing


def _run(plan: Plan, progress: bool) -> RunResult:
    test = plan.test
    live: LiveCounts | None = None
    if progress:
        live = LiveCounts()
        test = LoadTest(
            test.base_url,
            Watched(test.scenario, live),
            test.model,
            timeout=test.timeout,
            connections=test.connections,
            headers=test.headers,
            drain=test.drain,
        )
    try:
        if live is None:
            return _execute(test, plan.workers)
        with Progress(live, plan):
            return _execute(test, plan.workers)
    except ValueError as exc:  # a split the core refuses
        raise BadInput(f"--workers: {exc}") from None


def _execute(test: LoadTest, workers: int) -> RunResult:
    if workers == 1:
        return run_load_sync(test)
    return run_workers(test, workers)


def result_json(
    result: RunResult, plan: Plan, outcomes: Sequence[Outcome], title: str
) -> dict[str, Any]:
    """The result (with histograms, so it can be merged) and how it was judged."""
    return {
        **result.to_json(),
        "title": title,
        "target": plan.target,
        "scenario": plan.scenario,
        "model": plan.model,
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
        "--journey, the target's base URL.",
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
        None, "--duration", help=f"How long, e.g. 30s, 5m, 2h (default {DEFAULT_DURATION})."
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
    from HDR histograms. Exit code: 0 thresholds passed, 1 one failed, 2 bad input.

    Examples:

    `alwayson loadtest http://127.0.0.1:8080/healthz --rate 500 --duration 1m -t 'p99 < 200ms'`

    `alwayson loadtest --journey bank-registration http://127.0.0.1:8080 --ramp 30s:50,2m:200`

    `alwayson loadtest http://127.0.0.1:8080/ --users 50 --workers auto --json`

    Several machines: run one `--save part.json` per machine with its share of the rate,
    then merge the files with `merge_results` (see alwayson.loadgen.workers).
    """

    def body() -> None:
        try:
            checks = parse_thresholds(thresholds)
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
        except ThresholdError as exc:
            err.print(f"error: --threshold: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise Failed(2) from None
        except BadInput as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise Failed(2) from None
        name = title or f"{plan.scenario} on {plan.target}"
        if not as_json:
            err.print(
                f"loading {plan.target} ({plan.scenario}) for {format_duration(plan.duration)}, "
                f"{plan.model}, {plan.workers} process(es)",
                markup=False,
                highlight=False,
            )
        try:
            result = _run(plan, progress=not as_json)
        except BadInput as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise Failed(2) from None
        except LoadTestError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise Failed(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: no result (the run was cut short)")
            raise Failed(130) from None
        outcomes = evaluate(checks, result)
        data = result_json(result, plan, outcomes, name)
        if save is not None:
            _write(save, json.dumps(data, indent=2) + "\n", "result")
        if html is not None:
            details = {
                "target": plan.target,
                "scenario": plan.scenario,
                "model": plan.model,
                "processes": str(result.workers),
            }
            _write(html, render_html(result, name, outcomes, details), "HTML report")
        if as_json:
            _emit_json(data)
        else:
            print_summary(result, outcomes)
        _hint(result, plan.target)
        print_outcomes(outcomes)
        for path, what in ((save, "result"), (html, "report")):
            if path is not None and not as_json:
                err.print(f"{what} written to {path}", markup=False, highlight=False)
        if not all_passed(outcomes):
            failed = sum(1 for o in outcomes if not o.passed)
            err.print(f"[red]{failed} of {len(outcomes)} threshold(s) failed[/red]")
            raise Failed(1)

    _wrap(body)
