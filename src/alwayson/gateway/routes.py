"""The route table the controller pushes to a gateway: models, validation, the file copy.

The table is validated once, when it arrives (``PUT /routes`` or the routes file at start),
never per request: the hot path works on the compiled form built by
:mod:`alwayson.gateway.balancing` and :mod:`alwayson.gateway.matching`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alwayson.util.addresses import split_hostport
from alwayson.util.errors import ConflictError, PermanentError

Name = Annotated[str, Field(min_length=1, max_length=200)]
# Which side of a release a backend runs: the version in service, or the one being released.
Track = Literal["stable", "candidate"]


class InvalidRouteTable(PermanentError):
    """A route table (pushed or read from the routes file) is not valid; says why."""


class StaleRouteTable(ConflictError):
    """A pushed table is older (lower ``generation``) than the one in use."""

    def __init__(self, pushed: int, current: int) -> None:
        super().__init__(
            f"route table generation {pushed} is older than the current generation {current}"
        )
        self.pushed = pushed
        self.current = current


class Backend(BaseModel):
    """One instance a route can send traffic to.

    ``weight`` 0 means no ordinary traffic; requests pinned to the backend's ``track``
    (:mod:`alwayson.gateway.balancing`) still reach it, which is how a blue-green preview
    is tried before the switch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Name
    address: str
    site: Name
    version: Name = "unknown"
    weight: int = Field(default=100, ge=0, le=1_000_000)
    track: Track = "stable"

    @field_validator("address")
    @classmethod
    def _address_is_host_port(cls, value: str) -> str:
        text = value.strip()
        if "://" in text or "/" in text:
            raise ValueError(f"{value!r} must be host:port, like 127.1.1.1:8000")
        host, sep, _port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} must be host:port, like 127.1.1.1:8000")
        split_hostport(text)  # raises ValueError with a clear message on a bad port
        return text

    def host_port(self) -> tuple[str, int]:
        return split_hostport(self.address)


class Route(BaseModel):
    """Requests matching ``hosts`` and ``path_prefix`` go to ``backends`` of ``service``.

    ``max_body_bytes`` caps a request body (413 beyond it); None means the gateway's
    default (10 MiB unless configured otherwise).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: Name
    hosts: list[str] = Field(default_factory=list)
    path_prefix: str | None = None
    backends: list[Backend] = Field(default_factory=list)
    max_body_bytes: int | None = Field(default=None, ge=0)

    @field_validator("hosts")
    @classmethod
    def _hosts_are_names(cls, value: list[str]) -> list[str]:
        hosts: list[str] = []
        for raw in value:
            host = raw.strip().lower()
            if not host or any(c in host for c in " /?#@"):
                raise ValueError(f"{raw!r} is not a host name")
            if ":" in host and not host.startswith("["):
                raise ValueError(f"{raw!r}: write the host without a port")
            if host not in hosts:
                hosts.append(host)
        return hosts

    @field_validator("path_prefix")
    @classmethod
    def _prefix_is_a_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        if any(c in value for c in "?# \t"):
            raise ValueError(f"{value!r} must be a plain path (no query, fragment or spaces)")
        return value

    @model_validator(mode="after")
    def _backend_ids_unique(self) -> Route:
        seen: set[str] = set()
        for backend in self.backends:
            if backend.id in seen:
                raise ValueError(f"backend id {backend.id!r} appears twice")
            seen.add(backend.id)
        return self


class RouteTable(BaseModel):
    """The whole table of one gateway; ``generation`` only ever grows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generation: int = Field(ge=0)
    site: Name
    routes: list[Route] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_two_routes_match_the_same(self) -> RouteTable:
        owners: dict[tuple[str, str | None], int] = {}
        for index, route in enumerate(self.routes):
            prefix = normalized_prefix(route.path_prefix)
            for host in route.hosts or [""]:
                key = (host, prefix)
                if key in owners:
                    where = f"host {host!r}" if host else "any host"
                    raise ValueError(
                        f"routes[{owners[key]}] and routes[{index}] both match {where} "
                        f"and path prefix {route.path_prefix!r}"
                    )
                owners[key] = index
        return self


def normalized_prefix(prefix: str | None) -> str | None:
    """``/accounts/`` and ``/accounts`` match the same paths; ``/`` matches every path."""
    if prefix is None:
        return None
    return prefix.rstrip("/")


def empty_table(site: str) -> RouteTable:
    return RouteTable(generation=0, site=site, routes=[])


def standalone_table(site: str, upstreams: list[str]) -> RouteTable:
    """One catch-all route to ``upstreams`` (``http://host:port`` or ``host:port``)."""
    backends = []
    for index, text in enumerate(upstreams, start=1):
        host, port = split_hostport(text)
        backends.append(
            Backend(id=f"upstream-{index}", address=f"{host}:{port}", site=site, version="0")
        )
    route = Route(service="standalone", hosts=[], path_prefix=None, backends=backends)
    return RouteTable(generation=0, site=site, routes=[route])


def parse_table(data: bytes | str) -> RouteTable:
    """Validate a table from JSON; every fault is named by its path in the document."""
    try:
        return RouteTable.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidRouteTable(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "(table)"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "invalid route table: " + "; ".join(lines)


def load_table_file(path: Path) -> RouteTable | None:
    """The table saved by the last accepted push, or None when there is no file yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidRouteTable(f"cannot read routes file {path}: {exc}") from None
    try:
        return parse_table(data)
    except InvalidRouteTable as exc:
        raise InvalidRouteTable(f"{path}: {exc}") from None


def save_table_file(path: Path, table: RouteTable) -> None:
    """Write atomically: a crash leaves either the old file or the new one, never half."""
    data = table.model_dump_json(indent=2).encode() + b"\n"
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
