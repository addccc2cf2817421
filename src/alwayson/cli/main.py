"""``alwayson``: the command line. Every command that reports takes ``--json``.

Operators type these commands all day, so a command imports only what it uses: the
modules below are light, and the controller daemon, the spec's models, asyncio and the
HTTP client are imported inside the commands that need them. The CLI never imports the
controller daemon: ``up`` and ``down`` find and spawn it through ``alwayson.api.records``
(its records and its command line), and ``up`` of a platform on etcd through
``alwayson.api.bootstrap``: the exceptions import-linter allows in the CLI's contract.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from alwayson.cli import (
    databases,
    dbaccess,  # noqa: F401  (registers `db url` and `db connect`)
    drills,
    gateways,
    loadtest,
    observing,
    releases,
    tokens,
)
from alwayson.cli.common import (
    AllowDestroyOpt,
    Failed,
    JsonOpt,
    SpecOpt,
    _call,
    _client,
    _emit_json,
    _load,
    _locate,
    _pick,
    _run,
    _wrap,
    console,
    err,
    operator_secrets,
)
from alwayson.cli.isolation import isolation_lost, me
from alwayson.util.addresses import port_is_free, split_hostport
from alwayson.util.errors import SpecError

if TYPE_CHECKING:
    from alwayson.api.client import ApiClient
    from alwayson.spec.loading import LoadedSpec

app = typer.Typer(
    name="alwayson",
    help="Keep digital services always on across two datacenters, from one spec file.\n\n"
    "Start with `alwayson up examples/digital-bank/alwayson.yaml`, then `alwayson status`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"alwayson {version('alwayson')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print alwayson's version and exit.",
    ),
) -> None:
    """Keep digital services always on across two datacenters, from one spec file."""


app.add_typer(gateways.app, name="gateway")
app.add_typer(releases.release_app, name="release")
app.add_typer(releases.upgrade_app, name="upgrade")
app.add_typer(databases.db_app, name="db")
app.add_typer(databases.backup_app, name="backup")
app.add_typer(drills.drill_app, name="drill")
app.add_typer(observing.silence_app, name="silence")
app.add_typer(observing.autoscale_app, name="autoscale")
app.add_typer(observing.export_app, name="export")
app.add_typer(tokens.token_app, name="token")
app.command()(observing.alerts)
app.command()(observing.report)
app.command()(observing.query)
app.command()(releases.deploy)
app.command()(loadtest.loadtest)


SAMPLE_CUSTOMER = {
    "name": "Siti Rahma",
    "email": "siti@example.com",
    "id_number": "3174012304900001",
    "city": "jakarta",
}
CONTROLLER_START_DEADLINE = 30.0
CRASH_LOOP = 3
DOWN_DEADLINE = 120.0


async def _ensure_controller(loaded: LoadedSpec, quiet: bool) -> None:
    """Start the controller daemon unless one already answers for this state directory."""
    import asyncio

    from alwayson.api.records import LOG_FILE, controller_record, spawn

    if loaded.spec.has_consensus:  # a controller in every site, on etcd
        from alwayson.api.bootstrap import bring_up

        def say(line: str) -> None:
            if not quiet:
                err.print(f"  {line}", markup=False)

        await bring_up(loaded, say)
        return
    api = loaded.spec.controller.api
    async with _client(loaded, "up") as probe:
        if controller_record(loaded.state_dir) is not None and await probe.healthy():
            return
        host, port = split_hostport(api)
        if controller_record(loaded.state_dir) is None and not port_is_free(host, port):
            err.print(
                f"{loaded.path}: controller.api: {api} is already in use by another process. "
                "Stop it, or set controller.api to a free address in the spec."
            )
            raise Failed(1)
        pid = spawn(loaded.state_dir, api)
        if not quiet:
            err.print(f"started controller pid {pid} (API http://{api}, state {loaded.state_dir})")
        deadline = time.monotonic() + CONTROLLER_START_DEADLINE
        while time.monotonic() < deadline:
            if await probe.healthy():
                return
            if controller_record(loaded.state_dir) is None and not _pid_alive(pid):
                break
            await asyncio.sleep(0.05)
    tail = _tail(loaded.state_dir / LOG_FILE, 15)
    err.print(f"[red]the controller did not start; last lines of its log:[/red]\n{tail}")
    raise Failed(1)


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _wait_ready(
    client: ApiClient, quiet: bool, timeout: float, databases: bool = False
) -> dict[str, Any]:
    """Wait until every desired process is ready, showing progress per site, then (with
    ``databases``) until every database serves."""
    import asyncio

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    status = await client.status()
    progress = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} ready"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
    tasks = {
        s["name"]: progress.add_task(s["name"], total=s["desired"])
        for s in status["sites"]
        if not s["witness"]
    }
    with progress:
        while True:
            for site in status["sites"]:
                if site["name"] in tasks:
                    progress.update(
                        tasks[site["name"]], completed=site["ready"], total=site["desired"]
                    )
            if status["converged"]:
                break
            failures = [
                i
                for i in status["instances"]
                if i["desired"] and (i["start_failure"] or i["failures"] >= CRASH_LOOP)
            ]
            if failures or time.monotonic() - started > timeout:
                progress.stop()
                return status
            await asyncio.sleep(0.1)
            status = await client.status()
    if databases:
        status["waiting_for"] = await _wait_databases(client, quiet, started + timeout)
    return status


async def _wait_databases(client: ApiClient, quiet: bool, deadline: float) -> list[str]:
    """Wait until every database takes writes (and, synchronous, has its standby named in
    the lease): processes ready is not yet a bank that can register a customer. What is
    still missing at the deadline; empty: every database serves."""
    import asyncio

    from alwayson.cli.databases import serving_gaps

    shown: list[str] = []
    while True:
        gaps = serving_gaps(await client.get_json("/api/v1/databases"))
        if not gaps or time.monotonic() > deadline:
            return gaps
        if gaps != shown and not quiet:
            for gap in gaps:
                err.print(f"  waiting: {gap}", markup=False)
            shown = gaps
        await asyncio.sleep(0.2)


def _report_not_ready(status: dict[str, Any]) -> None:
    bad = [i for i in status["instances"] if i["desired"] and not i["ready"]]
    err.print(f"[red]{len(bad)} process(es) are not ready; the rest keep running:[/red]")
    for inst in bad[:20]:
        why = inst["start_failure"] or inst["last_exit"] or inst["last_probe"] or inst["phase"]
        err.print(f"  {inst['id']} ({inst['service']} in {inst['site']}): {why}", markup=False)
        err.print(f"    log: {inst['log']}", markup=False)


# ---------------------------------------------------------------- commands


@app.command()
def up(
    spec_path: Path | None = typer.Argument(None, help="Spec file (same as -f)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
    timeout: float = typer.Option(60.0, help="Seconds to wait for every instance to be ready."),
    allow_destroy: bool = AllowDestroyOpt,
) -> None:
    """Bring the whole platform up (or converge it) and return when every instance is ready.

    Starts the controller daemon if it is not running; running `up` twice is harmless.
    A spec already applied as it is is not applied again: drift set by `deploy` or
    `scale`, and a release in progress, are kept (`alwayson apply` ends drift).
    """

    def go() -> None:
        loaded = _load(_pick(spec_path, file))
        started = time.monotonic()
        lost = isolation_lost(loaded.spec.runtime.user, os.geteuid(), me())
        if lost and not as_json:
            err.print(f"note: {lost}", markup=False, highlight=False)

        async def flow() -> dict[str, Any]:
            await _ensure_controller(loaded, as_json)
            async with _client(loaded, "up") as client:
                now = await client.status()
                if (now.get("digest"), now.get("spec")) == (loaded.digest, str(loaded.path)):
                    # Already applied as it is: `up` only brings back what must run. It
                    # does not re-apply, which would end `deploy`/`scale` drift and
                    # race a release a restarted controller is continuing (`apply` does).
                    if not as_json:
                        err.print("  the spec is applied as it is; nothing to change")
                else:
                    result = await client.apply(
                        loaded.text, str(loaded.path), allow_destroy, operator_secrets(loaded)
                    )
                    if not as_json:
                        for change in result.changes:
                            err.print(f"  {change}", markup=False)
                return await _wait_ready(client, as_json, timeout, bool(loaded.spec.databases))

        status = _run(flow())
        took = time.monotonic() - started
        if as_json:
            _emit_json({"seconds": round(took, 3), **status})
        if not status["converged"]:
            _report_not_ready(status)
            raise Failed(1)
        if status.get("waiting_for"):
            err.print("[red]every process is ready, but not every database serves:[/red]")
            for gap in status["waiting_for"]:
                err.print(f"  {gap}", markup=False)
            err.print("  see: alwayson db status", markup=False)
            raise Failed(1)
        if not as_json:
            _print_ready(status, took)

    _wrap(go)


def _print_ready(status: dict[str, Any], took: float) -> None:
    console.print(
        f"[green]platform {status['platform']} is up:[/green] {status['ready']}/"
        f"{status['desired']} processes ready in {took:.1f}s"
    )
    console.print(f"front door: [bold]{status['front_door']}[/bold]")
    console.print("try:")
    spec = status["spec"]
    console.print(f"  alwayson status -f {spec}", markup=False)
    console.print(
        f"  curl -s -XPOST {status['front_door']}/onboarding/register "
        "-H 'content-type: application/json' "
        "-d '" + json.dumps(SAMPLE_CUSTOMER) + "'",
        markup=False,
    )
    console.print(f"  alwayson logs accounts --site jakarta -f {spec}", markup=False)
    console.print(f"  alwayson down -f {spec}", markup=False)


@app.command()
def down(
    spec_path: Path | None = typer.Argument(None, help="Spec file (same as -f)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stop every instance, gateway and front door, then the controller."""

    def go() -> None:
        loaded = _load(_pick(spec_path, file), check_commands=False)

        async def flow() -> str:
            import asyncio

            from alwayson.api.records import controller_record

            await _ensure_controller(loaded, quiet=True)
            record = controller_record(loaded.state_dir)
            pids = [int(str(record["pid"]))] if record else []
            if loaded.spec.has_consensus:
                from alwayson.api.bootstrap import site_controller_pids

                pids = [p for p in site_controller_pids(loaded.state_dir) if _pid_alive(p)]
            async with _client(loaded, "down") as client:
                message = (await client.down()).message
            deadline = time.monotonic() + DOWN_DEADLINE
            while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return message

        message = _run(flow())
        if as_json:
            _emit_json({"message": message})
        else:
            console.print(f"{message}; controller stopped")

    _wrap(go)


@app.command()
def status(file: Path = SpecOpt, as_json: bool = JsonOpt) -> None:
    """Sites, services and instances: health, version, address, pid."""

    def go() -> None:
        data = _call(file, "status", lambda client: client.status())
        if as_json:
            _emit_json(data)
            return
        _print_status(data)

    _wrap(go)


def _print_status(data: dict[str, Any]) -> None:
    if data["platform"] is None:
        console.print("nothing is applied (run `alwayson up`)")
        return
    console.print(
        f"[bold]{data['platform']}[/bold]  {data['ready']}/{data['desired']} ready  "
        f"front door {data['front_door']}"
    )
    console.print(f"controller: {data['verdict']}", markup=False)
    leader = (data.get("leadership") or {}).get("leader")
    if leader:
        others = ", ".join(sorted(data["leadership"].get("controllers", {})))
        console.print(
            f"leader: controller@{leader['site']} ({leader['api']}, term {leader['term']}); "
            f"controllers in {others}",
            markup=False,
        )
    sites = Table("site", "subnet", "role", "ready")
    for site in data["sites"]:
        role = "witness" if site["witness"] else "workloads"
        sites.add_row(site["name"], site["subnet"], role, f"{site['ready']}/{site['desired']}")
    console.print(sites)
    table = Table("service", "site", "instance", "version", "address", "pid", "health", "restarts")
    for inst in data["instances"]:
        health = "[green]ready[/green]" if inst["ready"] else f"[yellow]{inst['phase']}[/yellow]"
        if not inst["desired"]:
            health += " (not in spec)"
        table.add_row(
            inst["service"],
            inst["site"],
            inst["id"],
            inst["version"],
            inst["address"],
            str(inst["pid"] or "-"),
            health,
            str(inst["restarts"]),
        )
    console.print(table)
    for drift in data["drift"]:
        console.print(
            f"[yellow]drift:[/yellow] {drift['service']} in {drift['site']} scaled to "
            f"{drift['replicas']} (`alwayson plan` shows it, `alwayson apply` restores the spec)"
        )
    for svc in data["services"]:
        if svc.get("release"):
            console.print(
                f"[cyan]release:[/cyan] {svc['release']} (`alwayson release status {svc['name']}`)",
            )


@app.command()
def plan(file: Path = SpecOpt, as_json: bool = JsonOpt) -> None:
    """Show what `apply` would change: the spec against what runs (including drift)."""

    def go() -> None:
        loaded = _load(file)

        async def flow() -> list[str]:
            async with _client(loaded, "plan") as client:
                secrets = operator_secrets(loaded)
                return (await client.plan(loaded.text, str(loaded.path), secrets)).changes

        changes = _run(flow())
        if as_json:
            _emit_json({"changes": changes})
        elif not changes:
            console.print("no changes: what runs matches the spec")
        else:
            console.print(f"{len(changes)} change(s):")
            for change in changes:
                console.print(f"  {change}", markup=False)

    _wrap(go)


@app.command()
def apply(
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
    wait: bool = typer.Option(True, help="Wait until every instance is ready."),
    timeout: float = typer.Option(60.0, help="Seconds to wait with --wait."),
    allow_destroy: bool = AllowDestroyOpt,
) -> None:
    """Converge the platform to a changed spec (clears drift from `scale`).

    A destructive change (a database removed, its primary_site or replication changed) is
    refused, and nothing changes, unless --allow-destroy is given; `alwayson plan` marks
    them DESTRUCTIVE."""

    def go() -> None:
        loaded = _load(file)

        async def flow() -> tuple[list[str], dict[str, Any] | None]:
            async with _client(loaded, "apply") as client:
                changes = (
                    await client.apply(
                        loaded.text, str(loaded.path), allow_destroy, operator_secrets(loaded)
                    )
                ).changes
                if not as_json:
                    for change in changes or ["no changes"]:
                        err.print(f"  {change}", markup=False)
                status = await _wait_ready(client, as_json, timeout) if wait else None
                return changes, status

        changes, status = _run(flow())
        if as_json:
            _emit_json({"changes": changes, "converged": status["converged"] if status else None})
        if status is not None and not status["converged"]:
            _report_not_ready(status)
            raise Failed(1)
        if not as_json:
            console.print(f"applied {len(changes)} change(s)")

    _wrap(go)


@app.command()
def scale(
    service: str = typer.Argument(..., help="Service name."),
    replicas: int = typer.Argument(..., help="Replicas per site."),
    site: str | None = typer.Option(None, "--site", help="Only this site (default: every site)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Set a service's replicas now. Recorded as drift from the spec; `plan` shows it."""

    def go() -> None:
        reply = _call(file, "scale", lambda client: client.scale(service, replicas, site))
        message = reply.message
        if as_json:
            _emit_json({"message": message})
        else:
            console.print(message, markup=False)

    _wrap(go)


@app.command()
def logs(
    service: str = typer.Argument(..., help="Service (or `gateway`, `frontdoor`)."),
    site: str | None = typer.Option(None, "--site", help="Only this site."),
    follow: bool = typer.Option(False, "--follow", help="Keep printing new lines."),
    tail: int = typer.Option(50, "--tail", help="Lines of history per instance."),
    file: Path = SpecOpt,
) -> None:
    """Print the logs of every instance of a service, each line prefixed by its instance."""

    def go() -> None:
        place = _locate(file)

        async def flow() -> None:
            async with _client(place, "logs") as client:
                async for line in client.logs(service, site, tail, follow):
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()

        with contextlib.suppress(KeyboardInterrupt):
            _run(flow())

    _wrap(go)


@app.command()
def audit(
    limit: int = typer.Option(50, help="How many entries, newest first."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The audit log: every change to the platform, when, and from which command."""

    def go() -> None:
        entries = _call(file, "audit", lambda client: client.audit(limit))
        if as_json:
            _emit_json(entries)
            return
        table = Table("when (UTC)", "command", "action", "detail")
        for entry in entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["at"]))
            detail = json.dumps(entry["detail"], ensure_ascii=False)
            table.add_row(when, entry["actor"], entry["action"], detail[:160])
        console.print(table)

    _wrap(go)


@app.command()
def events(
    limit: int = typer.Option(50, help="How many events, newest first."),
    kind: str | None = typer.Option(None, help="Only this kind (crashed, stopped, …)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """What happened to instances: crashes with exit codes, restarts, stops, failed starts."""

    def go() -> None:
        rows = _call(file, "events", lambda client: client.events(limit, kind))
        if as_json:
            _emit_json(rows)
            return
        table = Table("when (UTC)", "kind", "instance", "message")
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["at"]))
            table.add_row(when, row["kind"], row["subject"], row["message"])
        console.print(table)

    _wrap(go)


@app.command()
def validate(
    spec_path: Path | None = typer.Argument(None, help="Spec file (same as -f)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check a spec: prints `file:line:column: path: message` for every problem."""
    import dataclasses

    from alwayson.spec.loading import load_spec_file

    path = _pick(spec_path, file)
    try:
        loaded = load_spec_file(path)
    except SpecError as exc:
        if as_json:
            _emit_json({"valid": False, "problems": [dataclasses.asdict(p) for p in exc.problems]})
        else:
            for problem in exc.problems:
                err.print(str(problem), markup=False, highlight=False)
            err.print(f"[red]{len(exc.problems)} problem(s)[/red]")
        raise typer.Exit(2) from None  # as every command exits on an invalid spec
    if as_json:
        _emit_json({"valid": True, "platform": loaded.spec.platform, "digest": loaded.digest})
    else:
        spec = loaded.spec
        console.print(
            f"{path}: valid: platform {spec.platform}, {len(spec.sites)} sites, "
            f"{len(spec.services)} services",
            markup=False,
        )


@app.command()
def schema() -> None:
    """Print the JSON Schema of alwayson.yaml (for editors and CI checks)."""
    from alwayson.spec.schemas import render_schema

    sys.stdout.write(render_schema())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
