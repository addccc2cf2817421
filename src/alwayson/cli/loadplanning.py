"""Reading ``alwayson loadtest``'s command line into a checked plan.

Every problem is a ``BadInput`` whose message names the option and the fix (exit 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from alwayson.cli.loadtest import DEFAULT_DURATION, DEFAULT_RATE, DEFAULT_SNAPSHOT_EVERY
from alwayson.loadgen import (
    ArrivalSchedule,
    ClosedModel,
    LoadTest,
    OpenModel,
    PacingLimits,
    Request,
    UrlList,
)
from alwayson.loadgen.journeys import JourneyError, resolve_journey
from alwayson.loadgen.scenarios import Journey
from alwayson.util.durations import format_duration, parse_duration

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
                f"alwayson loadtest --journey {journey} http://127.0.0.1:8080; "
                "without a URL, the default is the front door of ./alwayson.yaml (or -f SPEC)"
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


def soak_options(soak: bool, snapshot_every: str | None, report_dir: Path | None) -> float:
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
