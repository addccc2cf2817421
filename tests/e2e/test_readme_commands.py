"""Every `alwayson …` command README.md shows in its shell blocks runs as written.

The lines are read from README.md itself, so a command added there is run here too. Each
runs from the folder of a copy of the sample bank (an `alwayson.yaml` in the working
directory, the way an operator works), in the order the README gives them; the
destructive ones (failover, drills) come late there already. A line is turned into what
can be typed, and nothing else is changed:

- `[optional parts]` are left out, `a | b` and `x|y` give one command per alternative;
- placeholders (ID, NAME, DIR, FILE) become a real id, name, folder or file;
- the README's front door 127.0.0.1:8080 becomes this copy's private address (tests never
  share ports);
- long durations are shortened (SHORTER), and the canary's waits too, with the release
  options `deploy` documents.

A few lines can only be refused at the point where the README shows them (a promote with
nothing left to promote): EXPECTED_REFUSALS names them with the reason the CLI must give.
Where a line needs the platform in the state the README implies, BEFORE and AFTER put it
there with other commands (they are not what is tested). CANNOT_RUN lists, with the
reason, the one line this test does not run. Every other line must exit 0, and a load
test must have reached its target.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from ruamel.yaml import YAML
from tests.support import (
    ROOT,
    Platform,
    Stream,
    isolate,
    kill_recorded,
    open_to_workloads,
    wait_for,
    write_spec,
)

README = ROOT / "README.md"
SAMPLE = ROOT / "examples" / "digital-bank"
README_FRONT_DOOR = "127.0.0.1:8080"
SHELL_BLOCKS = ("```sh", "```bash", "```shell")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")
T = TypeVar("T")

# What a line needs that only a test on a shared machine would shorten.
SHORTER = {"--duration": {"1m": "3s", "30s": "3s"}}
# `deploy --wait` of a canary holds each of its 4 steps 10 s and asks for 20 requests of
# the candidate per analysis: the same release, with the waits `deploy` lets one set.
EXTRA = {("deploy",): ["--pause", "1s", "--interval", "1s", "--min-requests", "5"]}
# (command words) → (exit code, words the refusal must contain), and why it is refused.
EXPECTED_REFUSALS: dict[tuple[str, ...], tuple[int, str]] = {
    # `deploy --wait` just above finished the release: nothing is paused, nothing runs.
    ("release", "promote"): (1, "is running; nothing to do"),
    ("release", "abort"): (1, "is running; nothing to do"),
}
# Commands run around a README line, and why: they must run (a drill may be judged failed).
BEFORE: dict[tuple[str, ...], list[str]] = {
    # A drill to show: the site-loss drill above is in CANNOT_RUN.
    ("drill", "show"): ["drill", "run", "instance-kill", "--rate", "20"],
}
AFTER: dict[tuple[str, ...], list[str]] = {
    # A rollback runs in the background; the gateways are upgraded only between releases.
    ("release", "rollback"): ["release", "status", "accounts", "--watch"],
}
CANNOT_RUN: dict[tuple[str, ...], str] = {
    ("drill", "run", "site-loss"): "about 4 minutes here (the site's processes restored and "
    "the database failed back under load), twice this test's budget; "
    "tests/integration/test_drills.py runs a site-loss drill",
}


@dataclass(frozen=True)
class Command:
    line: str  # as README.md shows it
    argv: tuple[str, ...]  # what runs, placeholders still in


def shell_lines(text: str) -> list[str]:
    """The `alwayson …` lines of the shell code blocks of a Markdown text."""
    found, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() in SHELL_BLOCKS
            continue
        if inside and line.lstrip().startswith("alwayson "):
            found.append(line.strip())
    return found


def expand(line: str) -> list[Command]:
    """The commands one README line stands for (see the module's docstring)."""
    words = shlex.split(line, comments=True)[1:]
    kept, optional = [], False
    for word in words:
        if word.startswith("["):
            optional = True
        if not optional:
            kept.append(word)
        if word.endswith("]"):
            optional = False
    groups: list[list[str]] = [[]]
    for word in kept:
        if word == "|":
            groups.append([])
        else:
            groups[-1].append(word)
    first = groups[0]
    variants = [first] + [first[:1] + alternative for alternative in groups[1:]]
    out: list[Command] = []
    for variant in variants:
        choices = [word.split("|") if "|" in word else [word] for word in variant]
        expanded: list[list[str]] = [[]]
        for options in choices:
            expanded = [[*done, option] for done in expanded for option in options]
        out += [Command(line, tuple(argv)) for argv in expanded]
    return out


def readme_commands() -> list[Command]:
    return [c for line in shell_lines(README.read_text()) for c in expand(line)]


def test_the_reading_of_readme_lines() -> None:
    assert expand("alwayson backup list | verify ID       # verify: pg_verifybackup") == [
        Command("alwayson backup list | verify ID       # verify: pg_verifybackup", a)
        for a in (("backup", "list"), ("backup", "verify", "ID"))
    ]
    line = "alwayson report health|utilisation [--since 24h] [--html report.html] [--json]"
    assert [c.argv for c in expand(line)] == [("report", "health"), ("report", "utilisation")]
    line = 'alwayson silence add -m site=jakarta --for 1h -c "rack move" | list | expire ID'
    assert [c.argv for c in expand(line)] == [
        ("silence", "add", "-m", "site=jakarta", "--for", "1h", "-c", "rack move"),
        ("silence", "list"),
        ("silence", "expire", "ID"),
    ]
    lines = shell_lines(README.read_text())
    assert any(line.startswith("alwayson loadtest --journey") for line in lines)


# ---------------------------------------------------------------- the running bank


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The sample bank from a copy of examples/digital-bank, up once for the module; every
    process it recorded is stopped by pid at the end, even when a command failed."""
    root = tmp_path_factory.mktemp("readme")
    folder = root / "digital-bank"
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns(".alwayson", "__pycache__"))
    os.chmod(folder, 0o755)
    open_to_workloads(folder)
    data = isolate(dict(YAML().load((SAMPLE / "alwayson.yaml").read_text())))
    write_spec(folder / "alwayson.yaml", data)
    platform = Platform(
        spec_path=folder / "alwayson.yaml",
        state_dir=folder / ".alwayson",
        api=data["controller"]["api"],
        front_door=f"http://{data['front_door']['listen']}",
    )
    try:
        platform.cli("up", "--timeout", "120", timeout=240)
        yield platform
    finally:
        if platform.controller_pid() is not None:
            platform.cli("down", check=False, timeout=120)
        kill_recorded(platform.state_dir)


def alwayson(folder: Path, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The command as an operator types it in the platform's folder (no -f)."""
    return subprocess.run(
        [sys.executable, "-m", "alwayson.cli.main", *argv],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )


class Placeholders:
    """Real values for the README's placeholders, found on the running bank."""

    def __init__(self, bank: Platform, scratch: Path) -> None:
        self.bank, self.scratch = bank, scratch

    def value(self, argv: list[str], word: str) -> str:
        if word == "DIR":
            return str(self.scratch / "export")
        if word == "FILE":
            return str(self.scratch / "report.html")
        if word == "NAME" and argv[:2] == ["backup", "drop"]:
            return "bank-restored"  # what `backup restore` without --into names it
        if word == "ID" and argv[:2] == ["backup", "verify"]:
            return str(self._json("backup", "list")[-1]["id"])
        if word == "ID" and argv[:2] == ["silence", "expire"]:
            return str(self._json("silence", "list")[-1]["id"])
        if word == "ID" and argv[:2] == ["drill", "show"]:
            return str(self._json("drill", "list")[0]["id"])
        raise AssertionError(f"no value for {word} in `alwayson {' '.join(argv)}`")

    def _json(self, *argv: str) -> list[dict[str, object]]:
        found: list[dict[str, object]] = json.loads(self.bank.cli(*argv, "--json").stdout)
        assert found, f"`alwayson {' '.join(argv)}` lists nothing"
        return found


def runnable(command: Command, bank: Platform, values: Placeholders) -> list[str]:
    argv: list[str] = []
    previous = ""
    for word in command.argv:
        if PLACEHOLDER.match(word):
            word = values.value(list(command.argv), word)
        word = word.replace(README_FRONT_DOOR, bank.front_door.removeprefix("http://"))
        word = SHORTER.get(previous, {}).get(word, word)
        argv.append(word)
        previous = word
    for prefix, extra in EXTRA.items():
        if tuple(argv[: len(prefix)]) == prefix:
            argv += extra
    return argv


def primary_back_in_jakarta(bank: Platform) -> None:
    """The switchover the README shows just before made surabaya primary; its failover
    moves the primary from jakarta to surabaya. A switchover back is refused until the new
    standby has caught up, so it is asked again until it is done."""

    def switched() -> bool:
        bank.cli("db", "switchover", "--to", "jakarta", check=False, timeout=120)
        sites = json.loads(bank.cli("db", "status", "--json").stdout)[0]["sites"]
        return {s["site"]: s["role"] for s in sites}.get("jakarta") == "primary"

    wait_for("jakarta primary again", switched, timeout=90, every=1.0)


def matching(table: dict[tuple[str, ...], T], argv: list[str]) -> T | None:
    return next((v for words, v in table.items() if argv[: len(words)] == list(words)), None)


def test_every_readme_command_runs_as_written(bank: Platform, tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 30, [c.line for c in commands]
    values = Placeholders(bank, tmp_path)
    failures: list[str] = []
    with Stream(bank.front_door, ["/accounts?customer_id=readme"], rate=50):
        for command in commands:
            if matching(CANNOT_RUN, list(command.argv)) is not None:
                continue
            if list(command.argv[:2]) == ["db", "failover"]:
                primary_back_in_jakarta(bank)
            before = matching(BEFORE, list(command.argv))
            if before is not None:
                prepared = bank.cli(*before, check=False, timeout=300)
                assert prepared.returncode in (0, 1), prepared.stdout + prepared.stderr
            argv = runnable(command, bank, values)
            started = time.monotonic()
            done = alwayson(bank.spec_path.parent, argv, timeout=300)
            took = time.monotonic() - started
            print(f"{took:5.1f}s exit {done.returncode}: alwayson {shlex.join(argv)}")
            refusal = matching(EXPECTED_REFUSALS, argv)
            output = done.stdout + done.stderr
            if refusal is not None:
                code, words = refusal
                if done.returncode != code or words not in output:
                    failures.append(f"{command.line}\n  expected exit {code} ({words}):\n{output}")
            elif done.returncode != 0 or "no iteration succeeded" in output:
                failures.append(f"{command.line}\n  ran `{shlex.join(argv)}`:\n{output}")
            after = matching(AFTER, argv)
            if after is not None:
                bank.cli(*after, timeout=300)
    assert not failures, "README commands that do not run as written:\n\n" + "\n\n".join(failures)
