"""A drill's result as one self-contained HTML page, for an auditor reading it cold.

``render_report(result)`` takes the ``alwayson.drill.result/1`` dict that
``Drill.result()`` writes to ``result.json`` and gives a page with: the verdict and its
reason, the objectives, the key figures, the timeline plotted over success rate and
latency, the timeline as a table, the faults and when each was undone, the databases'
records, the lost and unacknowledged ids, the errors, the notes, and an appendix on how
each figure is measured. The plot is a PNG embedded as a ``data:`` URI (matplotlib, Agg,
no pyplot state): the page refers to nothing outside itself, so it can be mailed or
archived as evidence.

A figure that was not measured (``None``, or one that means nothing because no fault was
injected) is shown as "not measured" with the reason, never as 0. Missing keys are
tolerated: a partial result (a drill that died, an older schema) still renders.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jinja2

if TYPE_CHECKING:  # matplotlib is imported by the plot only: it costs 0.3 s to import
    from matplotlib.figure import Figure

__all__ = [
    "FaultRow",
    "KeyFigure",
    "ObjectiveRow",
    "RecordRow",
    "TimelineRow",
    "fault_rows",
    "key_figures",
    "number_text",
    "objective_rows",
    "offset_text",
    "record_rows",
    "render_report",
    "seconds_text",
    "timeline_plot",
    "timeline_rows",
    "utc_text",
    "verdict_text",
]

IDS_SHOWN = 50
NOT_PLOTTED = frozenset({"phase"})
# kind -> (colour, line style) of the vertical line on the plot
MARK_STYLES: dict[str, tuple[str, str]] = {
    "load-start": ("#8c959f", ":"),
    "fault": ("#cf222e", "-"),
    "detected": ("#bc4c00", "--"),
    "promoted": ("#8250df", "--"),
    "recovered": ("#1a7f37", "-"),
    "undone": ("#6e7781", "-."),
    "restored": ("#0969da", "--"),
    "replicating": ("#0550ae", ":"),
    "failback-start": ("#953800", ":"),
    "failback": ("#953800", "-."),
    "load-stop": ("#8c959f", ":"),
    "interrupted": ("#1f2328", "-"),
    "aborted": ("#1f2328", "-"),
    "error": ("#1f2328", "-"),
}
VERDICTS = {"passed": "met", "failed": "missed", "aborted": "stopped", "error": "missed"}


# -- reading a result that may be partial ----------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite number, or None (missing, null, not a number, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        found = float(value)
    except ValueError:
        return None
    return found if math.isfinite(found) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _rows(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [row for row in value if isinstance(row, Mapping)]


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    return [str(item) for item in value]


# -- words ------------------------------------------------------------------------------------


def utc_text(at: Any) -> str | None:
    """Wall-clock seconds as UTC ISO 8601 to the millisecond: ``2027-01-15T08:00:00.250Z``."""
    found = _number(at)
    if found is None:
        return None
    try:
        stamp = datetime.fromtimestamp(found, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def number_text(value: Any) -> str | None:
    """``12``, ``1,234``, ``3.21``, ``0.0042``; None stays None (not measured)."""
    found = _number(value)
    if found is None:
        return None
    if found.is_integer() and abs(found) < 1e15:
        return f"{int(found):,}"
    if abs(found) >= 1000:
        return f"{found:,.0f}"
    return f"{found:.3g}"


def seconds_text(value: Any) -> str | None:
    found = _number(value)
    if found is None:
        return None
    return f"{found:.2f} s" if abs(found) < 1000 else f"{found:,.0f} s"


def offset_text(at: Any, zero: float | None) -> str:
    """Signed seconds from ``zero``: ``+3.20 s``, ``-0.40 s``; "—" when either is missing."""
    found = _number(at)
    if found is None or zero is None:
        return "—"
    delta = found - zero
    sign = "-" if round(delta, 2) < 0 else "+"
    return f"{sign}{abs(delta):.2f} s"


def _relative(at: float, zero: float) -> str:
    """``0.03 s before the fault``, ``1.20 s after the fault``."""
    delta = at - zero
    return f"{abs(delta):.2f} s {'before' if delta < 0 else 'after'} the fault"


def _with_unit(value: Any, unit: str) -> str | None:
    text = number_text(value)
    if text is None:
        return None
    return f"{text}{unit}" if unit.startswith(" ") or not unit else f"{text} {unit}"


# -- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFigure:
    """One figure of the drill. ``value`` None: not measured, and ``hint`` says why."""

    name: str
    value: str | None
    detail: str = ""
    hint: str = ""
    alarm: bool = False


@dataclass(frozen=True)
class ObjectiveRow:
    name: str
    limit: str
    value: str | None
    passed: bool
    why: str


@dataclass(frozen=True)
class TimelineRow:
    at: str
    offset: str
    kind: str
    label: str


def _lag_text(lag: Any) -> tuple[str | None, str]:
    """The replication lag at the fault (a failover record's ``lag_at_fault``): the headline
    and the rest of it."""
    if lag is None:
        return None, ""
    if not isinstance(lag, Mapping):
        return str(lag), ""
    parts = [f"{k}: {v}" for k, v in lag.items() if v is not None]
    not_received = _number(lag.get("wal_bytes_not_received"))
    behind = _number(lag.get("bytes_behind_last_report"))
    if not_received is not None:
        headline = f"{number_text(not_received)} WAL bytes not received"
    elif behind is not None:
        headline = f"{number_text(behind)} bytes behind the primary's last report"
    else:
        age = _number(lag.get("replay_age_seconds"))
        headline = f"replay {age:.2f} s behind" if age is not None else "recorded (see detail)"
    return headline, "; ".join(parts)


def key_figures(result: Mapping[str, Any]) -> list[KeyFigure]:
    """The figures every drill records, in the order an auditor asks for them."""
    measures = _mapping(result.get("measures"))
    writes = _mapping(result.get("writes"))
    ledger = _mapping(writes.get("ledger"))
    rpo = _mapping(result.get("rpo"))
    fault = _number(result.get("fault_at"))
    no_fault = "no fault was injected"
    requests = _number(measures.get("requests"))
    no_load = "no request finished" if requests == 0 else ""
    write_note = str(writes.get("note") or "") or "the write check did not run"

    def after_fault(text: str | None, hint: str) -> tuple[str | None, str]:
        """A figure about the fault means nothing when none was injected (the result then
        holds 0 for some of them)."""
        if fault is None:
            return None, no_fault
        return text, "" if text is not None else hint

    failed_after, failed_after_hint = after_fault(
        number_text(measures.get("failed_after_fault")), "not counted"
    )
    detect, detect_hint = after_fault(
        seconds_text(measures.get("detect_seconds")),
        "no controller event, alert or database record showed the platform noticing",
    )
    rto, rto_hint = after_fault(
        seconds_text(measures.get("rto_seconds")),
        no_load or "requests did not succeed again and keep succeeding before the fault was undone",
    )
    gap, gap_hint = after_fault(seconds_text(measures.get("longest_gap_seconds")), "not measured")
    gap_at = _number(measures.get("longest_gap_at"))
    recovered = utc_text(measures.get("recovered_at"))

    lost = _number(rpo.get("acknowledged_writes_lost"))
    acknowledged = number_text(writes.get("acknowledged"))
    checked = bool(writes.get("checked"))
    unacked = _number(writes.get("unacknowledged_stored_count")) if checked else None
    problems = _texts(ledger.get("problems"))
    ledger_count = len(problems) if ledger.get("checked") else None
    lag, lag_detail = _lag_text(rpo.get("lag_at_fault"))
    if fault is None:
        lag_hint = no_fault
    elif not _rows(rpo.get("records")):
        lag_hint = "no database record after the fault (no database, or it did not fail over)"
    else:
        lag_hint = "no failover record: the primary did not change"

    primaries = result.get("primaries")
    most: float | None = None
    primaries_hint = "this scenario does not sample writable primaries"
    primaries_detail = ""
    if isinstance(primaries, Mapping):
        most = _number(primaries.get("max_writable"))
        samples = number_text(primaries.get("samples")) or "0"
        primaries_hint = f"no sample could be taken ({samples} samples)"
        primaries_detail = f"highest count over {samples} samples"
        two = _rows(primaries.get("two_writers"))
        if two:
            when = utc_text(two[0].get("at")) or "?"
            primaries_detail += f"; two writers first seen {when}"

    return [
        KeyFigure(
            "requests",
            number_text(requests),
            f"{number_text(measures.get('ok')) or '?'} succeeded" if requests else "",
            "no load ran",
        ),
        KeyFigure(
            "failed requests",
            number_text(measures.get("failed")),
            "over the whole drill",
            "no load ran",
        ),
        KeyFigure(
            "failed after the fault",
            failed_after,
            "requests that ended after the fault and failed",
            failed_after_hint,
        ),
        KeyFigure("time to detect", detect, "fault → first sign the platform noticed", detect_hint),
        KeyFigure(
            "RTO",
            rto,
            f"recovered at {recovered}" if recovered else "fault → requests succeed and keep on",
            rto_hint,
        ),
        KeyFigure(
            "longest gap",
            gap,
            f"no request succeeded from {_relative(gap_at, fault)}"
            if gap and gap_at is not None and fault is not None
            else "longest time without a successful request",
            gap_hint,
        ),
        KeyFigure(
            "acknowledged writes lost (RPO)",
            number_text(lost),
            f"of {acknowledged} acknowledged registrations" if acknowledged else "",
            write_note,
            alarm=bool(lost),
        ),
        KeyFigure(
            "stored but never acknowledged",
            number_text(unacked),
            "the answer was lost in the fault; not a loss",
            write_note,
        ),
        KeyFigure(
            "ledger problems",
            number_text(ledger_count),
            "ledger invariants broken",
            write_note if not checked else "the ledger was not checked",
            alarm=bool(ledger_count),
        ),
        KeyFigure("replication lag at the fault (RPO)", lag, lag_detail, lag_hint),
        KeyFigure(
            "writable primaries at once",
            number_text(most),
            primaries_detail,
            primaries_hint,
            alarm=most is not None and most > 1,
        ),
    ]


_SHOWN_AS = {"platform whole after undo": {0.0: "yes", 1.0: "no"}}


def objective_rows(result: Mapping[str, Any]) -> list[ObjectiveRow]:
    rows = []
    for raw in _rows(result.get("objectives")):
        name = str(raw.get("name") or "?")
        unit = str(raw.get("unit") or "")
        value, limit = _number(raw.get("value")), _number(raw.get("limit"))
        shown = _SHOWN_AS.get(name)
        if shown is not None:
            value_text = None if value is None else shown.get(value, number_text(value))
            limit_text = shown.get(limit, "?") if limit is not None else "?"
        else:
            value_text = _with_unit(value, unit)
            limit_text = f"≤ {_with_unit(limit, unit)}" if limit is not None else "?"
        rows.append(
            ObjectiveRow(
                name, limit_text, value_text, bool(raw.get("passed")), str(raw.get("why") or "")
            )
        )
    return rows


def timeline_rows(result: Mapping[str, Any]) -> list[TimelineRow]:
    """Every mark (phases included), oldest first, with its offset from the fault (or from
    the drill's start when no fault was injected)."""
    zero = _number(result.get("fault_at"))
    if zero is None:
        zero = _number(result.get("started_at"))
    marks = sorted(_rows(result.get("timeline")), key=lambda m: _number(m.get("at")) or 0.0)
    return [
        TimelineRow(
            utc_text(m.get("at")) or "?",
            offset_text(m.get("at"), zero),
            str(m.get("kind") or "?"),
            str(m.get("label") or ""),
        )
        for m in marks
    ]


# -- the plot ---------------------------------------------------------------------------------


def _data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _empty_runs(
    xs: Sequence[float], counts: Sequence[float], step: float
) -> list[tuple[float, float]]:
    """Spans of bins where no request finished, between the first and last that did."""
    busy = [i for i, n in enumerate(counts) if n]
    if not busy:
        return []
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for i in range(busy[0], busy[-1] + 1):
        if not counts[i] and start is None:
            start = xs[i]
        elif counts[i] and start is not None:
            spans.append((start, xs[i]))
            start = None
    return spans


def timeline_plot(result: Mapping[str, Any]) -> str | None:
    """Success rate (top) and p50/p99 latency (bottom) per bin, with the timeline's marks as
    vertical lines and the fault window shaded; x is seconds from the fault (from the first
    bin when no fault was injected). None when no request finished."""
    rows = _rows(result.get("series"))
    origin = _number(result.get("series_origin"))
    if origin is None or not any(_number(r.get("requests")) for r in rows):
        return None
    fault = _number(result.get("fault_at"))
    zero = fault if fault is not None else origin
    ts = [_number(r.get("t")) for r in rows]
    xs = [origin + (t if t is not None else 0.0) - zero for t in ts]
    step = (xs[1] - xs[0]) if len(xs) > 1 and xs[1] > xs[0] else 0.5
    edges = [*xs, xs[-1] + step]  # each row covers [t, t + step)

    def values(key: str, scale: float = 1.0, positive: bool = False) -> list[float]:
        out = []
        for r in rows:
            v = _number(r.get(key))
            out.append(math.nan if v is None or (positive and v <= 0) else v * scale)
        return [*out, out[-1]]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator

    figure = Figure(figsize=(10.0, 5.6), dpi=96)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.2]})
    success = values("success_rate", 100.0)
    top.step(edges, success, where="post", color="#1a7f37", linewidth=1.3, label="success rate")
    top.set_ylim(-3, 103)
    top.set_ylabel("success rate (%)", fontsize=9)
    p50 = values("p50_ms", positive=True)
    p99 = values("p99_ms", positive=True)
    bottom.step(edges, p50, where="post", color="#0969da", linewidth=1.2, label="p50")
    bottom.step(edges, p99, where="post", color="#cf222e", linewidth=1.2, label="p99")
    if any(not math.isnan(v) for v in p99):
        bottom.set_yscale("log")
        # Plain numbers (2, 5, 20, 50 ms), not powers of ten: the reader is not a physicist.
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        bottom.yaxis.set_major_formatter(plain)
        bottom.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        bottom.yaxis.set_minor_formatter(plain)
    bottom.set_ylabel("latency (ms, log scale)", fontsize=9)
    label_zero = "the fault" if fault is not None else "the start"
    bottom.set_xlabel(f"seconds from {label_zero} ({utc_text(zero)})", fontsize=9)

    counts = [_number(r.get("requests")) or 0.0 for r in rows]
    for n, (a, b) in enumerate(_empty_runs(xs, counts, step)):
        for axes in (top, bottom):
            axes.axvspan(
                a,
                b,
                color="#8c959f",
                alpha=0.25,
                linewidth=0,
                label="no request finished" if n == 0 and axes is top else None,
            )
    if fault is not None:
        undone = _number(result.get("undone_at"))
        end = undone - zero if undone is not None else edges[-1]
        for axes in (top, bottom):
            axes.axvspan(
                0.0,
                max(end, 0.0),
                color="#cf222e",
                alpha=0.08,
                linewidth=0,
                label=("fault in force" if undone is not None else "fault (never undone)")
                if axes is top
                else None,
            )
    seen: set[str] = set()
    for mark in sorted(_rows(result.get("timeline")), key=lambda m: _number(m.get("at")) or 0.0):
        kind, at = str(mark.get("kind") or ""), _number(mark.get("at"))
        if kind in NOT_PLOTTED or at is None:
            continue
        colour, style = MARK_STYLES.get(kind, ("#57606a", "--"))
        for axes in (top, bottom):
            axes.axvline(
                at - zero,
                color=colour,
                linestyle=style,
                linewidth=1.1,
                label=kind if axes is top and kind not in seen else None,
            )
        seen.add(kind)
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=8)
    handles: dict[str, Any] = {}
    for axes in (top, bottom):
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=False):
            handles.setdefault(label, handle)
    figure.legend(
        list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False
    )
    figure.subplots_adjust(left=0.08, right=0.80, bottom=0.09, top=0.97, hspace=0.08)
    return _data_uri(figure)


# -- the page ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultRow:
    kind: str
    target: str
    injected: str | None
    undone: str | None
    held: str | None
    note: str


@dataclass(frozen=True)
class RecordRow:
    database: str
    kind: str
    to: str
    came_from: str
    fault_basis: str
    detect: str | None
    promote: str | None
    rto: str | None
    lag: str | None
    lag_detail: str


def fault_rows(result: Mapping[str, Any]) -> list[FaultRow]:
    rows = []
    for f in _rows(result.get("faults")):
        injected, undone = _number(f.get("injected_at")), _number(f.get("undone_at"))
        held = undone - injected if injected is not None and undone is not None else None
        rows.append(
            FaultRow(
                str(f.get("kind") or "?"),
                str(f.get("target") or "?"),
                utc_text(injected),
                utc_text(undone),
                seconds_text(held),
                str(f.get("note") or ""),
            )
        )
    return rows


def record_rows(result: Mapping[str, Any]) -> list[RecordRow]:
    rows = []
    for r in _rows(_mapping(result.get("rpo")).get("records")):
        lag, lag_detail = _lag_text(r.get("lag_at_fault"))
        rows.append(
            RecordRow(
                str(r.get("database") or ""),
                str(r.get("kind") or "?"),
                str(r.get("to") or "—"),
                str(r.get("from") or "—"),
                str(r.get("fault_basis") or ""),
                seconds_text(r.get("detect_seconds")),
                seconds_text(r.get("promote_seconds")),
                seconds_text(r.get("rto_seconds")),
                lag,
                lag_detail,
            )
        )
    return rows


def _ids(writes: Mapping[str, Any], key: str) -> tuple[list[str], int]:
    """The first ``IDS_SHOWN`` ids and how many there are in all."""
    ids = _texts(writes.get(key))
    total = _number(writes.get(f"{key}_count"))
    return ids[:IDS_SHOWN], max(int(total) if total is not None else 0, len(ids))


def verdict_text(result: Mapping[str, Any], objectives: Sequence[ObjectiveRow]) -> str:
    reason = str(result.get("reason") or "")
    if reason:
        return reason
    status = str(result.get("status") or "")
    if status == "passed":
        if not objectives:
            return "The drill ran to the end; no objective was judged."
        return f"Every objective held ({len(objectives)} of {len(objectives)})."
    if status == "failed":
        missed = [o.name for o in objectives if not o.passed]
        return f"Objectives missed: {', '.join(missed) or 'unknown'}."
    if status == "running":
        return "The drill is still running: this is not a final result."
    return "No reason was recorded."


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("alwayson.drills", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(result: dict[str, Any]) -> str:
    """The drill's report as one HTML page with no reference outside itself."""
    status = str(result.get("status") or "unknown")
    load = _mapping(result.get("load"))
    writes = _mapping(result.get("writes"))
    measures = _mapping(result.get("measures"))
    objectives = objective_rows(result)
    lost, lost_total = _ids(writes, "lost")
    unacked, unacked_total = _ids(writes, "unacknowledged_stored")
    by_count = sorted(
        _mapping(measures.get("errors")).items(), key=lambda kv: -(_number(kv[1]) or 0.0)
    )
    errors = [(str(kind), number_text(n) or str(n)) for kind, n in by_count]
    started, finished = _number(result.get("started_at")), _number(result.get("finished_at"))
    notes = _texts(result.get("notes"))
    if writes.get("note"):
        notes.append(f"write check: {writes['note']}")
    scenario = str(result.get("scenario") or "unknown scenario")
    details = [
        ("drill", str(result.get("id") or "?")),
        ("scenario", scenario),
        ("site", str(result.get("site") or "—")),
        ("target", str(result.get("target") or "— (no fault was injected)")),
        ("run by", str(result.get("actor") or "?")),
        ("started", utc_text(started) or "?"),
        ("finished", utc_text(finished) or "?"),
        (
            "duration",
            seconds_text(finished - started)
            if started is not None and finished is not None
            else "?",
        ),
        ("fault injected", utc_text(result.get("fault_at")) or "— (no fault was injected)"),
        ("fault undone", utc_text(result.get("undone_at")) or "—"),
        ("platform whole again", utc_text(result.get("healed_at")) or "—"),
        (
            "load",
            f"{number_text(load.get('rate')) or '?'} {load.get('journey') or '?'} per second "
            f"through {load.get('front_door') or '?'}; fault held "
            f"{seconds_text(load.get('hold')) or '?'}",
        ),
        ("result schema", str(result.get("schema") or "?")),
    ]
    template = _environment().get_template("drill.html.j2")
    return template.render(
        heading=f"Drill {result['id']}: {scenario}" if result.get("id") else f"Drill: {scenario}",
        scenario=scenario,
        summary=str(result.get("summary") or ""),
        status=status,
        status_class=VERDICTS.get(status, "unknown"),
        verdict=verdict_text(result, objectives),
        interrupted=bool(result.get("interrupted")),
        fault_injected=_number(result.get("fault_at")) is not None,
        details=details,
        objectives=objectives,
        figures=key_figures(result),
        plot=timeline_plot(result),
        timeline=timeline_rows(result),
        faults=fault_rows(result),
        records=record_rows(result),
        lost=lost,
        lost_total=lost_total,
        unacked=unacked,
        unacked_total=unacked_total,
        write_checked=bool(writes.get("checked")),
        ledger_problems=_texts(_mapping(writes.get("ledger")).get("problems"))[:IDS_SHOWN],
        errors=errors,
        notes=notes,
        ids_shown=IDS_SHOWN,
    )
