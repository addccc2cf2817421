"""``alwayson loadtest``: the command and its options.

Only what ``--help`` needs is here; the load generator (and numpy, psutil, the HTML
report) is imported from ``cli/loadtesting.py`` when a load test runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from alwayson.cli.common import JsonOpt, _load, _wrap

DEFAULT_RATE = 100.0
DEFAULT_DURATION = "30s"
DEFAULT_SNAPSHOT_EVERY = "10m"


def loadtest(
    urls: list[str] = typer.Argument(
        None,
        metavar="URL",
        help="URL(s) to load, all on one target (requests take them in turn); with "
        "--journey, the target's base URL. 'merge FILE...' merges saved results instead.",
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
        None,
        "--duration",
        help=f"How long, e.g. 30s, 5m, 2h, 1d (default {DEFAULT_DURATION}).",
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
    soak: bool = typer.Option(
        False,
        "--soak",
        help="A long run (hours, days): snapshots of the figures so far and a rolling "
        "report in --report-dir every --snapshot-every; progress once a minute.",
    ),
    snapshot_every: str | None = typer.Option(
        None,
        "--snapshot-every",
        help=f"With --soak: how often to write a snapshot (default {DEFAULT_SNAPSHOT_EVERY}).",
    ),
    report_dir: Path | None = typer.Option(
        None,
        "--report-dir",
        help="With --soak: the folder for snapshot-NNNN.json and the rolling report.html.",
    ),
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
    file: Path = typer.Option(
        Path("alwayson.yaml"),
        "--file",
        "-f",
        help="With --journey and no URL: load this platform's front door.",
    ),
) -> None:
    """Load a target with an open model (a rate, or ramping stages) or a closed model
    (virtual users), and judge the run by thresholds.

    Talks to the target directly (no controller needed). With `--journey` and no URL,
    the target is the front door of the platform whose spec is `-f` (default
    ./alwayson.yaml), so inside a platform's folder the journey needs no URL. Latency runs from each
    iteration's intended start, so a slow target cannot hide its queueing; iterations the
    generator could not start in time are counted as dropped. Percentiles to p99.99 come
    from HDR histograms. Exit code: 0 thresholds passed, 1 one failed, 2 bad input, 130
    interrupted (the first Ctrl-C stops the arrivals and still writes the partial result,
    marked interrupted; a second one quits at once).

    Examples:

    `alwayson loadtest http://127.0.0.1:8080/healthz --rate 500 --duration 1m -t 'p99 < 200ms'`

    `alwayson loadtest --journey bank-registration http://127.0.0.1:8080 --ramp 30s:50,2m:200`

    `alwayson loadtest http://127.0.0.1:8080/ --users 50 --workers auto --json`

    `alwayson loadtest http://127.0.0.1:8080/ --rate 200 --duration 24h --soak --report-dir soak`

    Several machines: run one `--save part-N.json` per machine with its share of the
    rate, then `alwayson loadtest merge part-*.json --html report.html` (thresholds apply
    to the merged result).
    """

    def body() -> None:
        from alwayson.cli.loadtesting import run_loadtest

        targets = list(urls or [])
        if journey is not None and not targets:
            targets = _front_door(file)
        run_loadtest(
            targets,
            journey,
            rate,
            ramp,
            users,
            duration,
            think,
            workers,
            thresholds,
            max_in_flight,
            timeout,
            soak,
            snapshot_every,
            report_dir,
            as_json,
            html,
            save,
            title,
        )

    _wrap(body)


def _front_door(file: Path) -> list[str]:
    """The front door of the platform declared in ``file``, the natural target of a
    journey run inside a platform's folder; nothing when there is no such file (the
    command then asks for the target's URL)."""
    if not file.exists():
        return []
    loaded = _load(file, check_commands=False)
    return [f"http://{loaded.spec.front_door.listen}"]
