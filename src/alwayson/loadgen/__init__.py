"""Open-model load generation with HDR histograms, thresholds and merged multi-process runs.

Modules: ``arrivals`` (the schedule of intended starts and pacing), ``scenarios`` (URL
lists and Python journeys), ``running`` (one process, asyncio + httpx), ``workers`` (N
processes, merged), ``recording`` and ``results`` (figures, per-second series, JSON,
merging), ``histograms`` (typed HdrHistogram wrapper), ``thresholds`` (pass/fail checks).
"""

from alwayson.loadgen.arrivals import ArrivalSchedule, PacingLimits, Stage
from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.loadgen.results import RunResult, merge_results
from alwayson.loadgen.running import (
    ClosedModel,
    LoadTest,
    OpenModel,
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
    "ClosedModel",
    "Journey",
    "LatencyHistogram",
    "LoadTest",
    "LoadTestError",
    "OpenModel",
    "Outcome",
    "PacingLimits",
    "Request",
    "RunResult",
    "Session",
    "Stage",
    "StepFailed",
    "ThresholdError",
    "UrlList",
    "all_passed",
    "evaluate",
    "merge_results",
    "parse_threshold",
    "parse_thresholds",
    "run_load",
    "run_load_sync",
    "run_workers",
]
