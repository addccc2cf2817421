"""Helpers every command shares: loading the spec, calling the controller, errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from alwayson.api.client import ApiClient
from alwayson.api.tokens import read_token
from alwayson.spec.loading import LoadedSpec, load_spec_file
from alwayson.util.errors import AlwaysonError, SpecError

T = TypeVar("T")

console = Console()
err = Console(stderr=True)

FILE_HELP = "The platform spec (alwayson.yaml)."
JSON_HELP = "Print machine-readable JSON instead of tables."
SpecOpt = typer.Option(Path("alwayson.yaml"), "--file", "-f", help=FILE_HELP)
JsonOpt = typer.Option(False, "--json", help=JSON_HELP)


class Failed(Exception):
    """A command failed in a way already explained to the user."""

    def __init__(self, code: int = 1) -> None:
        self.code = code


# ---------------------------------------------------------------- helpers


def _run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _load(file: Path, check_commands: bool = True) -> LoadedSpec:
    try:
        return load_spec_file(file, check_commands=check_commands)
    except SpecError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        err.print(f"[red]{file}: {len(exc.problems)} problem(s); nothing was changed.[/red]")
        raise Failed(2) from None


def _pick(argument: Path | None, option: Path) -> Path:
    return argument if argument is not None else option


def _client(loaded: LoadedSpec, command: str) -> ApiClient:
    return ApiClient(loaded.spec.controller.api, read_token(loaded.state_dir), command)


def _call(file: Path, command: str, fn: Callable[[ApiClient], Awaitable[T]]) -> T:
    """One request to the controller of the platform that ``file`` declares."""
    loaded = _load(file, check_commands=False)

    async def flow() -> T:
        async with _client(loaded, command) as client:
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
