"""A load test's report as one self-contained HTML page (and the words shared with the CLI).

``render_html(result, title, outcomes)`` gives a page with the verdict (thresholds), the
totals, the latency percentiles to p99.99, one row per step, and two plots over time drawn
from the per-second series: throughput (iterations sent, ok, failed and dropped per
second) and latency (p50 and p99 of the iterations that ended in each second). Plots are
PNGs embedded as ``data:`` URIs (matplotlib, Agg, no pyplot state): the page refers to
nothing outside itself, so it can be mailed or archived as evidence. A run where nothing
finished says "no data" instead of plotting zeros. A run cut short by Ctrl-C says so at the
top; a soak shows the generator's resident memory at each snapshot (a line and a plot).
Folded rows (a minute or an hour of a long run) are drawn at their width, as rates per
second.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jinja2

from alwayson.loadgen.histograms import REPORTED_PERCENTILES, percentile_name
from alwayson.loadgen.recording import SecondRow
from alwayson.loadgen.results import RunResult
from alwayson.loadgen.thresholds import Outcome

if TYPE_CHECKING:  # matplotlib is imported by the plots only: it costs 0.3 s to import
    from matplotlib.figure import Figure


def ms_text(value: float | None) -> str:
    """Milliseconds for people: ``0.412ms``, ``12.3ms``, ``1.52s``; None is "no data"."""
    if value is None:
        return "no data"
    if value >= 1000:
        return f"{value / 1000:.3g}s"
    return f"{value:.3g}ms"


def micros_text(value: float | None) -> str:
    return ms_text(None if value is None else value / 1000.0)


def rate_text(value: float) -> str:
    return f"{value:,.1f}"


def share_text(value: float | None) -> str:
    """``0.012%``; never rounds a non-zero share to zero."""
    if value is None:
        return "no data"
    if value == 0:
        return "0%"
    if value < 0.0001:
        return "<0.01%"
    return f"{value * 100:.3g}%"


@dataclass(frozen=True)
class PercentileRow:
    name: str
    value_ms: float | None


def percentile_rows(result: RunResult) -> list[PercentileRow]:
    """min, p50 … p99.99, max of whole iterations (from their intended start)."""
    summary = result.latency.summary_ms()
    names = ["min", *(percentile_name(p) for p in REPORTED_PERCENTILES), "max"]
    return [PercentileRow(name, summary[name]) for name in names]


@dataclass(frozen=True)
class StepRow:
    name: str
    requests: int
    ok: int
    failed: int
    errors: str
    p50_ms: float | None
    p99_ms: float | None
    p9999_ms: float | None
    max_ms: float | None


def step_rows(result: RunResult) -> list[StepRow]:
    rows = []
    for name, step in sorted(result.steps.items()):
        found = step.latency.percentiles_us((50.0, 99.0, 99.99))
        rows.append(
            StepRow(
                name=name,
                requests=step.requests,
                ok=step.ok,
                failed=step.failed,
                errors=", ".join(f"{kind}: {n}" for kind, n in sorted(step.errors.items())),
                p50_ms=_ms(found[50.0]),
                p99_ms=_ms(found[99.0]),
                p9999_ms=_ms(found[99.99]),
                max_ms=_ms(step.latency.max_us()),
            )
        )
    return rows


def _ms(micros: int | None) -> float | None:
    return None if micros is None else micros / 1000.0


def actual_text(outcome: Outcome) -> str:
    """The run's value as the outcome shows it (``12.3ms``, ``0.1%``, ``none …``)."""
    shown = str(outcome)
    _, found, rest = shown.partition("(actual: ")
    return rest[:-1] if found and rest.endswith(")") else shown


def verdict(result: RunResult, outcomes: Sequence[Outcome]) -> str:
    """One sentence: what ran and whether the thresholds held."""
    if not result.sent and not result.dropped:
        return "No data: no iteration was started."
    base = (
        f"{result.sent:,} iterations sent, {result.ok:,} ok, {result.failed:,} failed, "
        f"{result.dropped:,} dropped over {result.duration:.1f}s "
        f"({rate_text(result.rps)} requests/s)."
    )
    if not outcomes:
        return base + " No threshold was set."
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        return base + f" All {len(outcomes)} threshold(s) passed."
    names = "; ".join(str(o) for o in failed)
    return base + f" {len(failed)} of {len(outcomes)} threshold(s) failed: {names}."


# -- plots ----------------------------------------------------------------------------------


def _figure() -> tuple[Figure, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 3.2), dpi=96)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.grid(alpha=0.3)
    axes.tick_params(labelsize=8)
    axes.set_xlabel("seconds from the start", fontsize=9)
    return figure, axes


def _data_uri(figure: Figure) -> str:
    figure.subplots_adjust(left=0.07, right=0.84, bottom=0.17, top=0.95)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _xs(series: Sequence[SecondRow]) -> list[int]:
    return [r.second - series[0].second for r in series]


def throughput_plot(series: Sequence[SecondRow]) -> str | None:
    """Iterations per second: sent (by intended start), ok and failed (by end), dropped."""
    if not any(r.sent or r.ok or r.failed or r.dropped for r in series):
        return None
    figure, axes = _figure()
    xs = _xs(series)
    for label, values, colour in (
        ("sent", [r.sent / r.span for r in series], "C0"),
        ("ok", [r.ok / r.span for r in series], "C2"),
        ("failed", [r.failed / r.span for r in series], "C3"),
        ("dropped", [r.dropped / r.span for r in series], "C1"),
    ):
        if label in ("failed", "dropped") and not any(values):
            continue
        # Each row covers [second, second + span): repeat the last value to draw its width.
        axes.step(
            [*xs, xs[-1] + series[-1].span],
            [*values, values[-1]],
            where="post",
            label=label,
            color=colour,
            linewidth=1.2,
        )
    axes.set_ylabel("iterations per second", fontsize=9)
    axes.set_ylim(bottom=0)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _data_uri(figure)


def latency_plot(series: Sequence[SecondRow]) -> str | None:
    """p50 and p99 (ms) of the iterations that ended in each second; gaps where none did."""
    if not any(r.p99_us is not None for r in series):
        return None
    figure, axes = _figure()
    xs = _xs(series)
    for label, values, colour in (
        ("p50", [_ms(r.p50_us) for r in series], "C0"),
        ("p99", [_ms(r.p99_us) for r in series], "C3"),
        ("max", [_ms(r.max_us) for r in series], "C7"),
    ):
        ys = [math.nan if v is None else v for v in values]
        style = ":" if label == "max" else "-"
        marker = "." if len(series) <= 600 else None
        axes.plot(xs, ys, style, label=label, color=colour, linewidth=1.2, marker=marker)
    axes.set_ylabel("latency (ms)", fontsize=9)
    axes.set_ylim(bottom=0)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _data_uri(figure)


def memory_plot(result: RunResult) -> str | None:
    """The generator's resident memory (MiB) at each soak snapshot."""
    if len(result.memory) < 2:
        return None
    figure, axes = _figure()
    xs = [m.time - result.started_at for m in result.memory]
    ys = [m.rss_bytes / 2**20 for m in result.memory]
    axes.plot(xs, ys, "-", color="C4", linewidth=1.2, marker=".", label="RSS")
    axes.set_ylabel("generator RSS (MiB)", fontsize=9)
    axes.set_ylim(bottom=0, top=max(ys) * 1.2)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _data_uri(figure)


def memory_text(result: RunResult) -> str | None:
    """One line: the generator's RSS at the first and last snapshot, and its peak."""
    if not result.memory:
        return None
    first, last = result.memory[0], result.memory[-1]
    peak = max(m.rss_bytes for m in result.memory)
    processes = f" over {last.processes} processes" if last.processes > 1 else ""
    return (
        f"Generator memory (RSS{processes}): {first.rss_bytes / 2**20:.1f} MiB at snapshot "
        f"{first.snapshot}, {last.rss_bytes / 2**20:.1f} MiB at snapshot {last.snapshot}, "
        f"peak {peak / 2**20:.1f} MiB over {len(result.memory)} snapshot(s)."
    )


# -- HTML -----------------------------------------------------------------------------------


def _time_text(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alwayson.loadgen", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ms=ms_text, share=share_text, rate=rate_text, time=_time_text, actual=actual_text
    )
    return env


def render_html(
    result: RunResult,
    title: str = "",
    outcomes: Sequence[Outcome] = (),
    details: dict[str, str] | None = None,
) -> str:
    """The whole report as one HTML page with no reference outside itself.

    ``details`` are shown as given (target, scenario, model…), in order.
    """
    series = result.series()
    plots = [
        ("Throughput (iterations per second)", throughput_plot(series)),
        ("Latency per second (p50, p99, max)", latency_plot(series)),
    ]
    if result.memory:
        plots.append(("Generator memory at each snapshot", memory_plot(result)))
    passed = None if not outcomes else all(o.passed for o in outcomes)
    template = _environment().get_template("loadtest.html.j2")
    return template.render(
        heading=f"Load test: {title}" if title else "Load test",
        result=result,
        outcomes=list(outcomes),
        passed=passed,
        verdict=verdict(result, outcomes),
        percentiles=percentile_rows(result),
        steps=step_rows(result),
        journey_errors=sorted(result.journey_errors.items()),
        details=list((details or {}).items()),
        plots=plots,
        no_data=result.finished == 0,
        memory=memory_text(result),
        folded=any(r.span > 1 for r in series),
    )
