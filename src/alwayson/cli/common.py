"""Helpers every command shares: loading the spec, calling the controller, errors.

Every command imports this module, ``--help`` included, so it imports only Typer, rich's
console and small modules of our own: the HTTP client, asyncio and the spec's models are
imported by the helpers that use them (see docs/BENCHMARKS.md, "CLI").
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from alwayson.api.tokens import read_token
from alwayson.spec.locating import PlatformAddress, locate_platform
from alwayson.util.errors import AlwaysonError, SpecError

if TYPE_CHECKING:
    from alwayson.api.client import ApiClient
    from alwayson.spec.loading import LoadedSpec

T = TypeVar("T")

console = Console()
err = Console(stderr=True)

FILE_HELP = "The platform spec (alwayson.yaml)."
JSON_HELP = "Print machine-readable JSON instead of tables."
SpecOpt = typer.Option(Path("alwayson.yaml"), "--file", "-f", help=FILE_HELP)
JsonOpt = typer.Option(False, "--json", help=JSON_HELP)
AllowDestroyOpt = typer.Option(
    False,
    "--allow-destroy",
    help="Also make destructive changes: remove a database, change its primary_site or "
    "replication. Without it they are refused and nothing changes.",
)


class Failed(Exception):
    """A command failed in a way already explained to the user."""

    def __init__(self, code: int = 1) -> None:
        self.code = code


# ---------------------------------------------------------------- helpers


def _run(coro: Awaitable[T]) -> T:
    import asyncio

    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _load(file: Path, check_commands: bool = True) -> LoadedSpec:
    from alwayson.spec.loading import load_spec_file

    try:
        return load_spec_file(file, check_commands=check_commands)
    except SpecError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        err.print(f"[red]{file}: {len(exc.problems)} problem(s); nothing was changed.[/red]")
        raise Failed(2) from None


def operator_secrets(loaded: LoadedSpec) -> dict[str, str]:
    """The values of the spec's ``env:`` secrets from this command's environment, to send
    with the spec (exit 2 naming each one that is not set)."""
    import os

    values: dict[str, str] = {}
    missing = []
    for index, secret in enumerate(loaded.spec.secrets):
        if secret.env is None:
            continue
        if secret.env in os.environ:
            values[secret.name] = os.environ[secret.env]
        else:
            missing.append(
                f"{loaded.path}: secrets[{index}:{secret.name}].env: ${secret.env} is not set; "
                "export it (the value goes to the controller, never into the spec)"
            )
    for line in missing:
        err.print(line, markup=False, highlight=False)
    if missing:
        raise Failed(2)
    return values


def _pick(argument: Path | None, option: Path) -> Path:
    return argument if argument is not None else option


def _client(loaded: LoadedSpec | PlatformAddress, command: str) -> ApiClient:
    # httpx imports its own command-line client when it can (click, pygments and rich's
    # progress bars: 30 ms of every command that asks the controller); this process never
    # runs it, so it is marked missing and httpx defines its stub instead.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from alwayson.api.client import ApiClient

    if isinstance(loaded, PlatformAddress):
        others = _other_controllers(loaded.state_dir)
        return ApiClient(loaded.api, read_token(loaded.state_dir), command, others=others)
    apis = list(loaded.spec.controller_apis().values())
    return ApiClient(loaded.spec.controller.api, read_token(loaded.state_dir), command, others=apis)


def _other_controllers(state_dir: Path) -> list[str]:
    """Every site controller's address, as ``up`` recorded them from the spec (none for a
    platform with one controller): reading the spec's sites would cost a YAML parse."""
    try:
        apis = json.loads((state_dir / "control" / "cluster.json").read_text())["apis"]
        return [str(a) for a in apis.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _locate(file: Path) -> PlatformAddress:
    """The controller of the platform that ``file`` declares, read without building the
    spec's models; a spec whose ``controller:`` cannot be read plainly is loaded fully,
    which reports its problems (exit 2)."""
    found = locate_platform(file)
    if found is not None:
        return found
    loaded = _load(file, check_commands=False)
    return PlatformAddress(loaded.spec.controller.api, loaded.state_dir)


def _call(file: Path, command: str, fn: Callable[[ApiClient], Awaitable[T]]) -> T:
    """One request to the controller of the platform that ``file`` declares."""
    place = _locate(file)

    async def flow() -> T:
        async with _client(place, command) as client:
            return await fn(client)

    return _run(flow())


def _wrap(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Failed as exc:
        raise typer.Exit(exc.code) from None
    except SpecError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        raise typer.Exit(2) from None
    except AlwaysonError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
