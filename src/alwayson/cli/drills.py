"""``alwayson drill ...``: run a fault under load, measure it, keep the evidence."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from alwayson.cli.common import Failed, JsonOpt, SpecOpt, _call, _emit_json, _wrap, console, err
from alwayson.spec.scenarios import SCENARIO_NAMES
from alwayson.util.durations import parse_duration
from alwayson.util.errors import (
    AlwaysonError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)

if TYPE_CHECKING:
    from alwayson.api.client import ApiClient

drill_app = typer.Typer(
    help="DR drills: a scripted fault (instance kill, site loss, partition, ...) run under "
    "load through the front door, measured (detection, RTO, requests failed, longest gap, "
    "acknowledged writes lost, RPO) and judged against the spec's objectives. Every fault "
    "is undone at the end, even when the drill fails or is interrupted.",
    no_args_is_help=True,
)

POLL = 0.5
UNREACHABLE_GRACE = 120.0  # the controller-kill drill takes the API away for a while


def _fmt_s(value: Any) -> str:
    return "not measured" if value is None else f"{float(value):.2f} s"


def _when(at: Any) -> str:
    if not at:
        return "-"
    return dt.datetime.fromtimestamp(float(at), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@drill_app.command("run")
def run(
    scenario: str = typer.Argument(..., help="One of: " + ", ".join(SCENARIO_NAMES) + "."),
    site: str | None = typer.Option(
        None, "--site", "-s", help="Site to hit (default: the database's primary site)."
    ),
    rate: float | None = typer.Option(
        None, "--rate", "-r", help="Load, journeys per second (default: the spec's drills.rate)."
    ),
    duration: str | None = typer.Option(
        None,
        "--duration",
        "-d",
        help="How long the fault is held, e.g. 15s (default: per scenario).",
    ),
    journey: str | None = typer.Option(
        None,
        "--journey",
        help="Load: bank-registration, a path (GET), or file.py:function (default: auto).",
    ),
    html: Path | None = typer.Option(None, "--html", help="Write the HTML report to this file."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run one drill and wait for its verdict (exit 0 passed, 1 failed, 2 bad input, 130 Ctrl-C).

    Ctrl-C once: the drill undoes its fault, stops the load and writes a partial result;
    twice: this command exits at once (the drill still cleans up).
    """

    def go() -> None:
        if scenario not in SCENARIO_NAMES:
            _refuse_unknown(scenario, file)
        hold = None
        if duration is not None:
            try:
                hold = parse_duration(duration)
            except ValueError as exc:
                err.print(f"--duration: {exc}")
                raise Failed(2) from None
        body: dict[str, Any] = {"scenario": scenario, "site": site, "rate": rate}
        body.update(duration=hold, journey=journey)
        result = _call(file, "drill run", lambda c: _run_drill(c, body, as_json))
        _finish(result, as_json, html, file)

    _wrap(go)


def _refuse_unknown(scenario: str, file: Path) -> None:
    """Exit 2 naming the scenarios; what each does comes from the controller (the drills'
    catalogue lives there), or only their names when it does not answer."""
    err.print(f"unknown drill scenario {scenario!r}; the scenarios are:")
    try:
        rows = _scenarios(file)
    except AlwaysonError:
        rows = [{"name": name, "summary": ""} for name in SCENARIO_NAMES]
    for row in rows:
        err.print(f"  {row['name']:16} {row['summary']}", markup=False, highlight=False)
    raise Failed(2)


def _scenarios(file: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _call(
        file, "drill list", lambda c: c.get_json("/api/v1/drills/scenarios")
    )
    return found


async def _run_drill(client: ApiClient, body: dict[str, Any], quiet: bool) -> dict[str, Any]:
    import asyncio

    from alwayson.api.client import ControllerUnreachable

    try:
        record: dict[str, Any] = await client.post_json("/api/v1/drills", body)
    except (NotFoundError, PermanentError, ConflictError) as exc:
        err.print(f"drill refused: {exc}", markup=False, highlight=False)
        raise Failed(2) from None
    ident = str(record["id"])
    if not quiet:
        console.print(f"drill [bold]{ident}[/bold] started (pid {record['pid']})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    presses = 0

    def interrupted() -> None:
        nonlocal presses
        presses += 1
        stop.set()
        if presses > 1:
            err.print(f"leaving; drill {ident} goes on undoing its faults (drill show {ident})")
            os._exit(130)

    loop.add_signal_handler(signal.SIGINT, interrupted)
    cancelled = False
    unreachable_since: float | None = None
    last = ""
    try:
        while True:
            if stop.is_set() and not cancelled:
                cancelled = True
                err.print("interrupted: undoing the fault and writing a partial result …")
                try:
                    await client.post_json(f"/api/v1/drills/{ident}/cancel", {})
                except (ControllerUnreachable, ConflictError):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(record["pid"]), signal.SIGINT)  # the pid the API gave us
            try:
                record = await client.get_json(f"/api/v1/drills/{ident}")
                unreachable_since = None
            except TemporaryError:  # unreachable, or a leader changing hands: ask again
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_GRACE:
                    err.print(
                        f"the controller has not answered for {UNREACHABLE_GRACE:.0f} s; the "
                        f"drill's files are in the state directory under drills/{ident}"
                    )
                    raise Failed(1) from None
                if not quiet and last != "unreachable":
                    console.print("  (controller not answering; waiting for it)")
                    last = "unreachable"
            else:
                if record.get("status") != "running":
                    break
                line = _progress_line(record.get("progress") or {})
                if not quiet and line and line != last:
                    console.print(f"  {line}", markup=False, highlight=False)
                    last = line
            await asyncio.sleep(POLL)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    record["cancelled"] = cancelled
    return record


def _progress_line(progress: dict[str, Any]) -> str:
    if not progress:
        return ""
    phase = progress.get("phase", "")
    elapsed = float(progress.get("elapsed", 0))
    text = f"[{elapsed:6.1f}s] {phase:9} {progress.get('requests', 0)} requests"
    text += f", {progress.get('failed', 0)} failed"
    if progress.get("fault_at"):
        text += f" ({progress.get('failed_since_fault', 0)} since the fault)"
    message = progress.get("message")
    return text + (f" — {message}" if message else "")


def _finish(record: dict[str, Any], as_json: bool, html: Path | None, file: Path) -> None:
    result = record.get("result") or {}
    if html is not None:
        text = _call(
            file, "drill report", lambda c: c.get_text(f"/api/v1/drills/{record['id']}/report")
        )
        html.write_text(text)
    if as_json:
        _emit_json(result or record)
    else:
        _print_result(record)
        if html is not None:
            console.print(f"report: {html}")
    status = record.get("status")
    if record.get("cancelled") or result.get("interrupted"):
        raise Failed(130)
    if status != "passed":
        raise Failed(1)


def _print_result(record: dict[str, Any]) -> None:
    result = record.get("result") or {}
    status = str(record.get("status", "?"))
    color = {"passed": "green", "failed": "red"}.get(status, "yellow")
    verdict = f"[{color}]{status.upper()}[/{color}]"
    console.print(f"[bold]{record.get('scenario')}[/bold] {record.get('id')}: {verdict}")
    if record.get("reason"):
        console.print(f"  {record['reason']}", markup=False, highlight=False)
    m = result.get("measures") or {}
    writes = result.get("writes") or {}
    table = Table(show_header=False, box=None)
    rows = [
        ("target", str(result.get("target") or "-")),
        (
            "requests",
            f"{m.get('requests', 0)} sent, {m.get('failed', 0)} failed "
            f"({m.get('failed_after_fault', 0)} after the fault)",
        ),
        ("time to detect", _fmt_s(m.get("detect_seconds"))),
        ("RTO", _fmt_s(m.get("rto_seconds"))),
        ("longest gap", _fmt_s(m.get("longest_gap_seconds"))),
    ]
    if m.get("controller_api_back_seconds") is not None:
        rows.append(("API back", f"{_fmt_s(m['controller_api_back_seconds'])} (next leader)"))
    if writes.get("checked"):
        rows.append(
            (
                "writes",
                f"{writes.get('acknowledged', 0)} acknowledged, {writes.get('lost_count', 0)} "
                f"lost, {writes.get('unacknowledged_stored_count', 0)} stored unacknowledged",
            )
        )
        ledger = writes.get("ledger") or {}
        rows.append(
            (
                "ledger",
                "balanced" if not ledger.get("problems") else "; ".join(ledger["problems"][:3]),
            )
        )
    primaries = result.get("primaries")
    if primaries:
        rows.append(
            (
                "writable primaries",
                f"at most {primaries.get('max_writable')} at once "
                f"({primaries.get('samples')} samples)",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    objectives = result.get("objectives") or []
    if objectives:
        judged = Table("objective", "limit", "measured", "")
        for o in objectives:
            value = o.get("value")
            judged.add_row(
                o["name"],
                f"{o['limit']:g}{o.get('unit', '')}",
                "not measured" if value is None else f"{value:g}{o.get('unit', '')}",
                "[green]pass[/green]" if o.get("passed") else "[red]FAIL[/red]",
            )
        console.print(judged)
    for note in result.get("notes") or []:
        console.print(f"  note: {note}", markup=False, highlight=False)


@drill_app.command("list")
def list_(
    limit: int = typer.Option(20, "--limit", "-n", help="How many, newest first."),
    scenarios: bool = typer.Option(False, "--scenarios", help="List the scenarios instead."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The drill history (newest first), or with --scenarios what can be run."""

    def go() -> None:
        if scenarios:
            rows = [
                {"name": s["name"], "summary": s["summary"], "hold_seconds": s["hold_seconds"]}
                for s in _scenarios(file)
            ]
            if as_json:
                _emit_json(rows)
                return
            table = Table("scenario", "default hold", "what it does")
            for row in rows:
                table.add_row(row["name"], f"{row['hold_seconds']:g}s", row["summary"])
            console.print(table)
            return
        found: list[dict[str, Any]] = _call(
            file, "drill list", lambda c: c.get_json("/api/v1/drills", limit=limit)
        )
        if as_json:
            _emit_json(found)
            return
        if not found:
            console.print("no drill has run yet (alwayson drill run SCENARIO)")
            return
        table = Table(
            "id", "scenario", "site", "started", "status", "detect", "RTO", "failed", "lost"
        )
        for d in found:
            table.add_row(
                str(d["id"]),
                str(d["scenario"]),
                str(d.get("site") or "-"),
                _when(d.get("started_at")),
                str(d.get("status")),
                _fmt_s(d.get("detect_seconds")),
                _fmt_s(d.get("rto_seconds")),
                "-" if d.get("failed") is None else str(d["failed"]),
                "-" if d.get("lost") is None else str(d["lost"]),
            )
        console.print(table)

    _wrap(go)


@drill_app.command("show")
def show(
    ident: str = typer.Argument(..., help="A drill id from `alwayson drill list`."),
    html: Path | None = typer.Option(None, "--html", help="Write the HTML report to this file."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """One drill: its verdict, figures and objectives (or its progress while it runs)."""

    def go() -> None:
        record: dict[str, Any] = _call(
            file, "drill show", lambda c: c.get_json(f"/api/v1/drills/{ident}")
        )
        if html is not None:
            text = _call(
                file, "drill report", lambda c: c.get_text(f"/api/v1/drills/{ident}/report")
            )
            html.write_text(text)
        if as_json:
            _emit_json(record.get("result") or record)
            return
        if record.get("status") == "running":
            console.print(f"{ident} is running: {_progress_line(record.get('progress') or {})}")
            return
        _print_result(record)
        if html is not None:
            console.print(f"report: {html}")

    _wrap(go)


@drill_app.command("cancel")
def cancel(ident: str = typer.Argument(...), file: Path = SpecOpt) -> None:
    """Stop a running drill: its faults are undone and a partial result is written."""

    def go() -> None:
        _call(file, "drill cancel", lambda c: c.post_json(f"/api/v1/drills/{ident}/cancel", {}))
        console.print(f"drill {ident}: cancel sent; `alwayson drill show {ident}` for the result")

    _wrap(go)
