"""``alwayson deploy``, ``alwayson release ...`` and ``alwayson upgrade gateway``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from alwayson.cli.common import (
    Failed,
    JsonOpt,
    SpecOpt,
    _call,
    _client,
    _emit_json,
    _locate,
    _run,
    _wrap,
    console,
    err,
)
from alwayson.util.durations import parse_duration
from alwayson.util.merging import deep_merge

if TYPE_CHECKING:
    from alwayson.api.client import ApiClient

release_app = typer.Typer(
    help="Follow, promote, abort and roll back releases (started by `deploy` or `apply`).",
    no_args_is_help=True,
)
upgrade_app = typer.Typer(
    help="Upgrade the platform's own components without dropping a request.",
    no_args_is_help=True,
)

POLL = 0.5
ACTIVE = ("progressing", "paused", "rolling-back")


def _settings(
    max_surge: int | None,
    max_unavailable: int | None,
    steps: str | None,
    pause: str | None,
    interval: str | None,
    failure_limit: int | None,
    min_requests: int | None,
    scale_down_delay: str | None,
) -> dict[str, Any]:
    """CLI overrides shaped like the spec's `release:` section."""
    out: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    put("rolling", "max_surge", max_surge)
    put("rolling", "max_unavailable", max_unavailable)
    if steps is not None:
        try:
            weights = [int(part) for part in steps.split(",") if part.strip()]
        except ValueError:
            err.print(f"--steps {steps!r}: write weights like 5,25,50,100", markup=False)
            raise Failed(2) from None
        put("canary", "steps", weights)
    for flag, section, key, text in (
        ("--pause", "canary", "pause", pause),
        ("--interval", "analysis", "interval", interval),
        ("--scale-down-delay", "blue_green", "scale_down_delay", scale_down_delay),
    ):
        if text is not None:
            try:
                put(section, key, parse_duration(text))
            except ValueError as exc:
                err.print(f"{flag}: {exc}", markup=False)
                raise Failed(2) from None
    put("analysis", "failure_limit", failure_limit)
    put("analysis", "min_requests", min_requests)
    return out


def deploy(
    service: str = typer.Argument(..., help="The service to release."),
    version: str = typer.Option(..., "--version", help="The new version's label."),
    run: str | None = typer.Option(
        None, "--run", help="Command of the new version (default: the current one)."
    ),
    strategy: str | None = typer.Option(
        None, "--strategy", help="rolling, blue-green or canary (default: the spec's)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the release until it ends."),
    max_surge: int | None = typer.Option(None, help="Rolling: new instances above replicas."),
    max_unavailable: int | None = typer.Option(None, help="Rolling: ready instances to spare."),
    steps: str | None = typer.Option(None, help="Canary weights, e.g. 5,25,50,100."),
    pause: str | None = typer.Option(None, help="Canary pause per step, e.g. 10s."),
    interval: str | None = typer.Option(None, help="Analysis interval, e.g. 2s."),
    failure_limit: int | None = typer.Option(None, help="Failed analyses before rollback."),
    min_requests: int | None = typer.Option(None, help="Candidate requests an analysis needs."),
    scale_down_delay: str | None = typer.Option(
        None, help="Blue-green: how long the old version stays up after the switch."
    ),
    settings_json: str | None = typer.Option(
        None,
        "--settings-json",
        help="Any release setting, shaped like the spec's `release:`, e.g. "
        '\'{"canary": {"no_traffic_timeout": "1m"}}\'.',
    ),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Release a new version of a service: rolling, blue-green or canary, analysed.

    Example: `alwayson deploy accounts --version 1.1.0 --strategy canary --wait`.
    The release's settings come from the service's `release:` in the spec; the options
    here override them for this release. The new version is drift from the spec until you
    write it there (`alwayson plan` shows it; `apply` of the old file releases it back).
    """

    def go() -> None:
        settings = _settings(
            max_surge,
            max_unavailable,
            steps,
            pause,
            interval,
            failure_limit,
            min_requests,
            scale_down_delay,
        )
        if settings_json:
            try:
                extra = json.loads(settings_json)
            except ValueError as exc:
                err.print(f"--settings-json: not JSON: {exc}", markup=False)
                raise Failed(2) from None
            if not isinstance(extra, dict):
                err.print("--settings-json: give a JSON object", markup=False)
                raise Failed(2)
            settings = deep_merge(extra, settings)
        from alwayson.api.schemas import DeployBody

        body = DeployBody(
            service=service, version=version, run=run, strategy=strategy, settings=settings
        )
        release = _call(file, "deploy", lambda client: client.deploy(body))
        if wait:
            release = _follow(file, service, quiet=as_json)
        if as_json:
            _emit_json(release)
        else:
            _print_release(release)
        if wait and release["phase"] != "succeeded":
            raise Failed(1)

    _wrap(go)


def _follow(file: Path, service: str, quiet: bool) -> dict[str, Any]:
    """Poll the release until it ends, with a progress bar (unless ``quiet``)."""
    place = _locate(file)

    async def flow() -> dict[str, Any]:
        async with _client(place, "release") as client:
            return await _watch(client, service, quiet)

    return _run(flow())


async def _current(client: ApiClient, service: str) -> dict[str, Any]:
    rows = await client.releases(service)
    if not rows:
        raise Failed(1)
    return rows[-1]


async def _watch(client: ApiClient, service: str, quiet: bool) -> dict[str, Any]:
    import asyncio

    release = await _current(client, service)
    if quiet:
        while release["phase"] in ACTIVE:
            await asyncio.sleep(POLL)
            release = await _current(client, service)
        return release
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.fields[service]}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(
            release["message"], total=len(release["stages"]), service=service, phase=""
        )
        while True:
            progress.update(
                task,
                description=release["message"][:90],
                completed=release["stage"] + (0 if release["phase"] in ACTIVE else 1),
                total=len(release["stages"]),
                phase=release["phase"],
            )
            if release["phase"] not in ACTIVE:
                break
            await asyncio.sleep(POLL)
            release = await _current(client, service)
    return release


def _print_release(release: dict[str, Any]) -> None:
    totals = release.get("totals") or {}
    by_version = totals.get("requests_by_version", {})
    console.print(f"[bold]{release['summary']}[/bold]")
    console.print(f"  {release['message']}", markup=False)
    if by_version:
        shown = ", ".join(f"{v}: {n}" for v, n in by_version.items())
        console.print(
            f"  requests by version: {shown}; failed {totals.get('failed', 0)}; dropped at "
            f"the gateway {totals.get('dropped', 0)}",
            markup=False,
        )
    if release.get("rollback_seconds") is not None:
        console.print(
            f"  first bad analysis → all traffic on {release['stable']['label']}: "
            f"{release['rollback_seconds']:.2f}s",
            markup=False,
        )
    for decision in release.get("decisions", [])[-3:]:
        reasons = "; ".join(decision["reasons"]) or "-"
        console.print(f"  {decision['stage']}: {decision['outcome']}: {reasons}", markup=False)


@release_app.command("status")
def status(
    service: str | None = typer.Argument(None, help="One service (default: all with releases)."),
    watch: bool = typer.Option(False, "--watch", help="Follow the release live until it ends."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The running release of each service (or its last one), with its figures."""

    def go() -> None:
        if watch:
            if service is None:
                err.print("--watch needs a SERVICE")
                raise Failed(2)
            release = _follow(file, service, quiet=as_json)
            if as_json:
                _emit_json(release)
            else:
                _print_release(release)
            return
        rows = _call(file, "release", lambda client: client.releases(service))
        if as_json:
            _emit_json(rows)
            return
        if not rows:
            console.print("no releases yet; start one with `alwayson deploy SERVICE --version V`")
            return
        table = Table("service", "release", "strategy", "phase", "stage", "requests", "failed")
        for row in rows:
            totals = row.get("totals") or {}
            by_version = totals.get("requests_by_version", {})
            table.add_row(
                row["service"],
                f"#{row['id']} {row['stable']['label']} → {row['candidate']['label']}",
                row["strategy"],
                row["phase"],
                f"{row['stage'] + 1}/{len(row['stages'])} {row['stages'][row['stage']]['name']}",
                ", ".join(f"{v}: {n}" for v, n in by_version.items()) or "-",
                f"{totals.get('failed', 0)} (+{totals.get('dropped', 0)} dropped)",
            )
        console.print(table)
        for row in rows:
            console.print(f"{row['service']}: {row['message']}", markup=False)

    _wrap(go)


def _action(file: Path, service: str, action: str, body: dict[str, Any], as_json: bool) -> None:
    release = _call(file, "release", lambda client: client.release_action(service, action, body))
    if as_json:
        _emit_json(release)
    else:
        _print_release(release)


@release_app.command("promote")
def promote(
    service: str = typer.Argument(..., help="The service whose release goes on."),
    full: bool = typer.Option(
        False, "--full", help="Skip every remaining pause, not just this one."
    ),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """End the current pause (a manual one too) and go to the next step; `--full` to the end.

    Instances are still only replaced when the new ones are ready: promotion skips waiting,
    never safety."""
    _wrap(lambda: _action(file, service, "promote", {"full": full}, as_json))


@release_app.command("abort")
def abort(
    service: str = typer.Argument(..., help="The service whose release stops."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stop the release and send all traffic back to the stable version at once."""
    _wrap(lambda: _action(file, service, "abort", {}, as_json))


@release_app.command("rollback")
def rollback(
    service: str = typer.Argument(..., help="The service to roll back."),
    to: str | None = typer.Option(None, "--to", help="A version from `release history`."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Abort a running release, or release the previous version again (rolling)."""
    _wrap(lambda: _action(file, service, "rollback", {"to": to}, as_json))


@release_app.command("history")
def history(
    service: str | None = typer.Argument(None, help="One service (default: all)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every release: when, what, the outcome and the figures behind it."""

    def go() -> None:
        rows = _call(file, "release", lambda client: client.release_history(service))
        if as_json:
            _emit_json(rows)
            return
        if not rows:
            console.print("no releases yet")
            return
        table = Table(
            "service", "#", "versions", "strategy", "outcome", "started", "took", "failed"
        )
        for row in rows:
            took = (row["ended_at"] or time.time()) - row["started_at"]
            totals = row.get("totals") or {}
            table.add_row(
                row["service"],
                str(row["id"]),
                f"{row['stable']['label']} → {row['candidate']['label']}",
                row["strategy"],
                row["phase"],
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["started_at"])),
                f"{took:.1f}s",
                f"{totals.get('failed', 0)} (+{totals.get('dropped', 0)} dropped)",
            )
        console.print(table)

    _wrap(go)


@upgrade_app.command("gateway")
def upgrade_gateway(
    site: str | None = typer.Option(None, "--site", help="Only this site (default: every site)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Roll the gateways and front doors onto the installed alwayson, site by site.

    The secondary site first; each new process takes the listening sockets over and the old
    one drains, so no request is dropped; the next site waits until this one is ready and
    its gateway answers without errors."""

    def go() -> None:
        result = _call(file, "upgrade", lambda client: client.upgrade_gateways(site))
        if as_json:
            _emit_json(result)
            return
        for row in result["replaced"]:
            console.print(
                f"{row['id']}: pid {row['old_pid']} → {row['new_pid']} in {row['seconds']:.2f}s",
                markup=False,
            )
        console.print(
            f"gateways and front doors of {', '.join(result['sites'])} run alwayson "
            f"{result['version']} ({result['seconds']:.1f}s)",
            markup=False,
        )

    _wrap(go)
