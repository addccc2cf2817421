"""Open-model load generation with HDR histograms, thresholds and merged multi-process runs.

Modules: ``arrivals`` (the schedule of intended starts and pacing), ``scenarios`` (URL
lists and Python journeys), ``clients`` (a lean keep-alive HTTP/1.1 client on httptools),
``running`` (one process on asyncio, live seconds, snapshots, stopping early),
``workers`` (N processes, merged), ``recording`` and ``results`` (figures, per-second
series folded to minutes and hours on long runs, JSON, merging), ``histograms`` (typed
HdrHistogram wrapper), ``thresholds`` (pass/fail checks), ``reporting`` (the HTML page).
"""

from alwayson.loadgen.arrivals import ArrivalSchedule, PacingLimits, Stage
from alwayson.loadgen.clients import (
    ClientError,
    FakeTransport,
    HttpClient,
    Response,
    Transport,
)
from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.loadgen.recording import SecondRow
from alwayson.loadgen.results import MemorySample, RunResult, merge_results
from alwayson.loadgen.running import (
    ClosedModel,
    LoadTest,
    OpenModel,
    run_in_loop,
    run_load,
    run_load_sync,
)
from alwayson.loadgen.scenarios import Journey, Request, Session, StepFailed, UrlList
from alwayson.loadgen.thresholds import (
    Check,
    Outcome,
    ThresholdError,
    all_passed,
    evaluate,
    parse_threshold,
    parse_thresholds,
)
from alwayson.loadgen.workers import LoadTestError, run_workers

__all__ = [
    "ArrivalSchedule",
    "Check",
    "ClientError",
    "ClosedModel",
    "FakeTransport",
    "HttpClient",
    "Journey",
    "LatencyHistogram",
    "LoadTest",
    "LoadTestError",
    "MemorySample",
    "OpenModel",
    "Outcome",
    "PacingLimits",
    "Request",
    "Response",
    "RunResult",
    "SecondRow",
    "Session",
    "Stage",
    "StepFailed",
    "ThresholdError",
    "Transport",
    "UrlList",
    "all_passed",
    "evaluate",
    "merge_results",
    "parse_threshold",
    "parse_thresholds",
    "run_in_loop",
    "run_load",
    "run_load_sync",
    "run_workers",
]
