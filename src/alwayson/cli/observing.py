"""``alwayson alerts``, ``silence``, ``autoscale``, ``report``, ``query``, ``export``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from alwayson.cli.common import (
    Failed,
    JsonOpt,
    SpecOpt,
    _call,
    _emit_json,
    _load,
    _wrap,
    console,
    err,
)

silence_app = typer.Typer(
    help="Silence alerts for a while (they are still tracked, not notified).",
    no_args_is_help=True,
)
autoscale_app = typer.Typer(help="The autoscaler's decisions.", no_args_is_help=True)
export_app = typer.Typer(
    help="Write configuration for the wider ecosystem (Prometheus, Alertmanager, Grafana).",
    no_args_is_help=True,
)


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return "—"
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def _labels(labels: dict[str, str], skip: tuple[str, ...] = ("alertname",)) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in skip)


def alerts(
    file: Path = SpecOpt,
    all_states: bool = typer.Option(
        False, "--all", help="Also pending and recently resolved alerts, not only firing ones."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Firing alerts, silences and the latest notification deliveries."""

    def body() -> None:
        data = _call(file, "alerts", lambda c: c.get_json("/api/v1/alerts"))
        if not all_states:
            data["alerts"] = [a for a in data["alerts"] if a.get("state") == "firing"]
        if as_json:
            _emit_json(data)
            return
        shown = data["alerts"]
        if not shown:
            console.print("no firing alerts" if not all_states else "no alerts")
        else:
            table = Table("state", "alert", "labels", "value", "since", "summary")
            for a in shown:
                state = a.get("state", "")
                if a.get("silenced_by"):
                    state += " (silenced)"
                if a.get("inhibited_by"):
                    state += " (inhibited)"
                table.add_row(
                    state,
                    a["labels"].get("alertname", ""),
                    _labels(a["labels"]),
                    f"{a.get('value', 0):.4g}" if isinstance(a.get("value"), float) else "",
                    _when(a.get("activeAt")),
                    (a.get("annotations") or {}).get("summary", ""),
                )
            console.print(table)
        if data["deliveries"]:
            table = Table("at", "receiver", "kind", "attempt", "result", title="deliveries")
            for d in data["deliveries"][-10:]:
                result = "ok" if d.get("ok") else f"failed: {d.get('error') or d.get('status')}"
                table.add_row(
                    _when(d.get("at")),
                    str(d.get("receiver")),
                    str(d.get("kind")),
                    str(d.get("attempt")),
                    result,
                )
            console.print(table)

    _wrap(body)


@silence_app.command("add")
def silence_add(
    match: list[str] = typer.Option(
        ..., "--match", "-m", help="label=value (repeat); every one must match."
    ),
    duration: str = typer.Option("2h", "--for", help="How long, e.g. 30m, 2h, 1d."),
    comment: str = typer.Option("", "--comment", "-c", help="Why (shown in the list)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Silence the alerts whose labels match, e.g. `-m site=jakarta --for 1h`."""

    def body() -> None:
        matchers: dict[str, str] = {}
        for item in match:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                err.print(f"--match {item!r}: write label=value, e.g. --match site=jakarta")
                raise Failed(2)
            matchers[name.strip()] = value.strip()
        made = _call(
            file,
            "silence add",
            lambda c: c.post_json(
                "/api/v1/silences",
                {"matchers": matchers, "duration": duration, "comment": comment},
            ),
        )
        if as_json:
            _emit_json(made)
        else:
            console.print(f"silence {made['id']} until {_when(made.get('ends_at'))}")

    _wrap(body)


@silence_app.command("list")
def silence_list(file: Path = SpecOpt, as_json: bool = JsonOpt) -> None:
    """Active and recently expired silences."""

    def body() -> None:
        found = _call(file, "silence list", lambda c: c.get_json("/api/v1/silences"))
        if as_json:
            _emit_json(found)
            return
        if not found:
            console.print("no silences")
            return
        table = Table("id", "state", "matchers", "ends", "by", "comment")
        for s in found:
            table.add_row(
                str(s["id"]),
                str(s.get("state", "")),
                _labels(s.get("matchers", {}), skip=()),
                _when(s.get("ends_at")),
                str(s.get("created_by", "")),
                str(s.get("comment", "")),
            )
        console.print(table)

    _wrap(body)


@silence_app.command("expire")
def silence_expire(ident: str, file: Path = SpecOpt, as_json: bool = JsonOpt) -> None:
    """End a silence now."""

    def body() -> None:
        made = _call(file, "silence expire", lambda c: c.delete_json(f"/api/v1/silences/{ident}"))
        if as_json:
            _emit_json(made)
        else:
            console.print(f"silence {ident} expired")

    _wrap(body)


@autoscale_app.command("history")
def autoscale_history(
    service: str | None = typer.Option(None, "--service", "-s", help="Only this service."),
    limit: int = typer.Option(30, "--limit", "-n", min=1, help="Newest this many."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every autoscaling decision with its figures (changes, and unchanged once a minute)."""

    def body() -> None:
        params: dict[str, Any] = {"limit": limit}
        if service:
            params["service"] = service
        found = _call(
            file, "autoscale history", lambda c: c.get_json("/api/v1/autoscale/history", **params)
        )
        if as_json:
            _emit_json(found)
            return
        if not found:
            console.print("no decisions yet (no service has `autoscale:`, or it just started)")
            return
        table = Table("at", "service", "site", "from", "to", "reason")
        for d in found:
            table.add_row(
                _when(d.get("at")),
                str(d.get("service")),
                str(d.get("site")),
                str(d.get("current")),
                str(d.get("desired")),
                str(d.get("reason", "")),
            )
        console.print(table)

    _wrap(body)


def report(
    kind: str = typer.Argument(..., help="utilisation or health"),
    since: str = typer.Option("24h", "--since", help="The period, back from now (e.g. 1h, 7d)."),
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML file."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Utilisation (CPU, memory, requests) or health (errors, latency, availability against
    objectives, alerts) per site and service, with plots in the HTML."""

    def body() -> None:
        if kind not in ("utilisation", "health"):
            err.print(f"unknown report {kind!r}: choose utilisation or health")
            raise Failed(2)
        path = f"/api/v1/reports/{kind}"
        data = _call(file, f"report {kind}", lambda c: c.get_json(path, since=since))
        if html is not None:
            page = _call(
                file, f"report {kind}", lambda c: c.get_text(path, since=since, html="true")
            )
            html.write_text(page, encoding="utf-8")
            err.print(f"wrote {html} ({len(page) // 1024} KiB, self-contained)")
        if as_json:
            _emit_json(data)
            return
        console.print(data.get("verdict") or f"{kind} report")
        rows = data.get("rows") or []
        if rows:
            keys = [k for k in rows[0] if k not in ("plots",)]
            table = Table(*keys)
            for row in rows:
                table.add_row(*(_cell(row.get(k)) for k in keys))
            console.print(table)

    _wrap(body)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def query(
    expr: str = typer.Argument(..., help="PromQL, e.g. 'sum by (site) (up)'."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Ask the embedded time-series store (instant query, now)."""

    def body() -> None:
        data = _call(file, "query", lambda c: c.get_json("/api/v1/query", expr=expr))
        if as_json:
            _emit_json(data)
            return
        if data["type"] == "scalar":
            console.print(_cell(data["value"]))
            return
        if not data["result"]:
            console.print("no data")
            return
        table = Table("series", "value")
        for row in data["result"]:
            name = row["labels"].get("__name__", "")
            table.add_row(
                f"{name}{{{_labels(row['labels'], skip=('__name__',))}}}", _cell(row["value"])
            )
        console.print(table)

    _wrap(body)


PROMETHEUS_TOKEN = "prometheus"


@export_app.command("prometheus")
def export_prometheus_cmd(
    folder: Path = typer.Argument(..., help="Where to write the files (created if missing)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """prometheus.yml, alert rules, alertmanager.yml and a Grafana dashboard for this spec.

    Prometheus gets a token of its own with the `read` role (named `prometheus`, made anew
    by every export, so an older one stops working), in `FOLDER/alwayson.token` (0600):
    never the platform owner's."""

    def body() -> None:
        # Works from the spec alone, no controller needed: the one import of `observe`
        # the CLI's import-linter contract allows (pyproject.toml).
        from alwayson.api.tokens import create_token, revoke_token
        from alwayson.observe.exporting import export_prometheus
        from alwayson.util.credentials import write_private

        loaded = _load(file, check_commands=False)
        revoke_token(loaded.state_dir, PROMETHEUS_TOKEN)
        token = create_token(loaded.state_dir, PROMETHEUS_TOKEN, "read")
        credentials = folder / "alwayson.token"
        write_private(credentials, token + "\n")
        written = [
            credentials,
            *export_prometheus(loaded.spec, credentials, folder),
        ]
        if as_json:
            _emit_json({"files": [str(p) for p in written]})
            return
        for path in written:
            console.print(f"wrote {path}")

    _wrap(body)
