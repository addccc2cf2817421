"""The configuration of one gateway process (``python -m alwayson.gateway`` flags), checked
once at start, and the policy objects the data path is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alwayson.gateway.ejecting import OutlierPolicy
from alwayson.gateway.exchanges import Limits
from alwayson.util.addresses import split_hostport
from alwayson.util.errors import PermanentError


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway process needs; addresses are ``host:port`` strings."""

    listen: tuple[str, ...]
    admin: str
    site: str
    routes_file: Path | None = None
    token_file: Path | None = None
    upstreams: tuple[str, ...] = ()  # standalone mode: one catch-all route to these
    reuse_port: bool = False
    handover: Path | None = None  # offer the listeners to a successor here
    takeover: Path | None = None  # take the listeners from the predecessor offering here
    # The site links' state (alwayson.util.sitelinks): backends in sites cut off from this
    # one are not used. None, or a missing file: nothing is cut.
    partitions_file: Path | None = None
    upstream_timeout: float = 30.0
    connect_timeout: float = 3.0
    drain_timeout: float = 10.0
    drain_grace: float = 1.0
    eject_seconds: float = 5.0  # the first ejection; each one in a row doubles it
    max_eject_seconds: float = 300.0
    eject_after_5xx: int = 5
    eject_after_connect_failures: int = 1
    slow_start_seconds: float = 10.0
    max_idle_per_backend: int = 256
    client_idle_timeout: float = 60.0
    header_timeout: float = 10.0
    tunnel_idle_timeout: float = 300.0
    max_header_bytes: int = 32 * 1024
    max_body_bytes: int = 10 * 1024 * 1024  # for routes without their own max_body_bytes
    max_connections: int = 10_000
    # Below the 5 s keep-alive of common servers (uvicorn, gunicorn), so the gateway is
    # usually the one to close an idle connection, not the one to race with its close.
    upstream_idle_timeout: float = 4.0
    backlog: int = 2048
    listen_addresses: tuple[tuple[str, int], ...] = field(init=False, repr=False)
    admin_address: tuple[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen", tuple(self.listen))
        object.__setattr__(self, "upstreams", tuple(self.upstreams))
        if not self.listen:
            raise PermanentError("a gateway needs at least one --listen address")
        if not self.site:
            raise PermanentError("a gateway needs a --site")
        try:
            listen = tuple(split_hostport(text) for text in self.listen)
            admin = split_hostport(self.admin)
            for text in self.upstreams:
                split_hostport(text)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        for name in (
            "upstream_timeout",
            "connect_timeout",
            "drain_timeout",
            "drain_grace",
            "client_idle_timeout",
            "upstream_idle_timeout",
            "header_timeout",
            "tunnel_idle_timeout",
        ):
            if getattr(self, name) <= 0:
                raise PermanentError(f"{name} must be more than zero seconds")
        for name in ("max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise PermanentError(f"{name} must be at least 1")
        if self.eject_seconds < 0 or self.max_idle_per_backend < 0 or self.max_body_bytes < 0:
            raise PermanentError(
                "eject_seconds, max_idle_per_backend and max_body_bytes cannot be negative"
            )
        try:
            self.outlier_policy()
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        object.__setattr__(self, "listen_addresses", listen)
        object.__setattr__(self, "admin_address", admin)

    def limits(self) -> Limits:
        return Limits(
            max_header_bytes=self.max_header_bytes,
            max_body_bytes=self.max_body_bytes,
            header_timeout=self.header_timeout,
            idle_timeout=self.client_idle_timeout,
            drain_grace=self.drain_grace,
            upstream_timeout=self.upstream_timeout,
            tunnel_idle_timeout=self.tunnel_idle_timeout,
            max_connections=self.max_connections,
        )

    def outlier_policy(self) -> OutlierPolicy:
        return OutlierPolicy(
            consecutive_5xx=self.eject_after_5xx,
            consecutive_connect_failures=self.eject_after_connect_failures,
            base_seconds=self.eject_seconds,
            max_seconds=max(self.max_eject_seconds, self.eject_seconds),
            slow_start_seconds=self.slow_start_seconds,
        )
