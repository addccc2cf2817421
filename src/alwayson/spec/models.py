"""The spec: one YAML file, ``alwayson.yaml``, the only source of truth of a platform.

These pydantic models are the reference; the JSON Schema shipped with the package is
generated from them (``alwayson schema``).
"""

from __future__ import annotations

import ipaddress
import pwd
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from alwayson.spec.drilling import Drills
from alwayson.spec.locating import DEFAULT_API, DEFAULT_STATE_DIR, normalize_listen
from alwayson.spec.observing import (
    Alerts,
    Autoscale,
    Metrics,
    Receiver,
    check_expr_problem,
    rule_expr_problem,
)
from alwayson.spec.secrets import Secret, SecretUse, secret_problems
from alwayson.spec.types import Duration, Name
from alwayson.util.addresses import is_loopback

ListenAddress = Annotated[
    str,
    BeforeValidator(lambda v: normalize_listen(str(v))),
    WithJsonSchema({"type": "string", "description": "host:port, e.g. 127.0.0.1:8080"}),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(Strict):
    """A datacenter. Workload sites run instances; the witness site only breaks ties."""

    name: Name
    witness: bool = False
    subnet: str | None = Field(
        default=None,
        description="Loopback /16 owned by the site; default 127.N.0.0/16 by order in the file.",
    )

    @field_validator("subnet")
    @classmethod
    def _loopback_16(cls, value: str | None) -> str | None:
        if value is None:
            return None
        net = ipaddress.ip_network(value, strict=True)
        if not net.is_loopback or net.prefixlen != 16 or net.version != 4:
            raise ValueError(f"{value!r} must be a /16 inside 127.0.0.0/8, like 127.1.0.0/16")
        return str(net)


class Probe(Strict):
    """A health check. Exactly one of ``http``, ``tcp`` or ``exec``."""

    http: str | None = Field(default=None, description="Path probed with GET; 2xx/3xx is healthy.")
    tcp: bool = Field(default=False, description="Healthy when the port accepts a connection.")
    exec: str | None = Field(default=None, description="Command run in the instance's folder.")
    interval: Duration = 1.0
    timeout: Duration = 0.5
    success_threshold: int = Field(default=1, ge=1)
    failure_threshold: int = Field(default=3, ge=1)
    start_timeout: Duration = Field(
        default=30.0, description="An instance not ready this long after start has failed."
    )

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Probe:
        kinds = [k for k, v in (("http", self.http), ("tcp", self.tcp), ("exec", self.exec)) if v]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of http: /path, tcp: true or exec: 'command'"
                + (f" (found {', '.join(kinds)})" if kinds else "")
            )
        if self.http is not None and not self.http.startswith("/"):
            raise ValueError(f"http: {self.http!r} must be a path starting with '/'")
        if self.timeout > self.interval:
            raise ValueError("timeout must not be longer than interval")
        return self


class Route(Strict):
    """Traffic for this service: by host, by path prefix, or both."""

    host: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _something(self) -> Route:
        if self.host is None and self.path is None:
            raise ValueError("a route needs a host, a path, or both")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"path {self.path!r} must start with '/'")
        return self


Replicas = int | dict[str, int]
MAX_REPLICAS = 100

Percent = Annotated[int, Field(ge=1, le=100)]


class RollingSettings(Strict):
    """Replace instances a few at a time, one site after the other."""

    max_surge: int = Field(
        default=1, ge=0, le=MAX_REPLICAS, description="New instances above replicas, per site."
    )
    max_unavailable: int = Field(
        default=0,
        ge=0,
        le=MAX_REPLICAS,
        description="Ready instances a site may lack during the release (0: never fewer).",
    )
    min_ready_seconds: Duration = Field(
        default=2.0, description="A new instance counts as available once ready this long."
    )
    site_order: list[Name] | None = Field(
        default=None,
        description="Sites in the order they are released; default: the secondary site "
        "(the last workload site in the file) first, the primary last.",
    )
    site_analysis: Duration = Field(
        default=6.0,
        description="Analysis of the new version between one site and the next (0: none).",
    )
    progress_deadline: Duration = Field(
        default=120.0,
        description="A step that makes no progress this long fails the release (rollback).",
    )

    @model_validator(mode="after")
    def _can_move(self) -> RollingSettings:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(
                "max_surge and max_unavailable cannot both be 0: the release could never "
                "start a new instance or stop an old one"
            )
        return self


class CanaryStep(Strict):
    """Send ``weight`` % of the traffic to the new version, then pause with analysis."""

    weight: Percent
    pause: Duration | Literal["manual"] | None = Field(
        default=None,
        description="How long to analyse before the next step ('manual': wait for "
        "`alwayson release promote`); default: canary.pause.",
    )


def _step(value: object) -> object:
    return {"weight": value} if isinstance(value, int) and not isinstance(value, bool) else value


class CanarySettings(Strict):
    """Shift traffic to the new version in weighted steps, analysing each one."""

    steps: list[Annotated[CanaryStep, BeforeValidator(_step)]] = Field(
        default_factory=lambda: [CanaryStep(weight=w) for w in (5, 25, 50, 100)],
        min_length=1,
        description="Weights in percent, ascending, the last one 100; a number or {weight, pause}.",
    )
    pause: Duration = Field(default=10.0, description="Default pause of a step.")
    no_traffic_timeout: Duration = Field(
        default=30.0,
        description="After its pause, a step whose canary got fewer than min_requests waits "
        "this much longer, then fails (a canary without traffic never passes).",
    )

    @field_validator("steps")
    @classmethod
    def _ascending_to_100(cls, value: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in value]
        if weights != sorted(set(weights)):
            raise ValueError(f"step weights must be strictly ascending, got {weights}")
        if weights[-1] != 100:
            raise ValueError(f"the last step must have weight 100, got {weights[-1]}")
        return value


class BlueGreenSettings(Strict):
    """Run the new version beside the old, preview it, switch all traffic in one step."""

    analysis: Duration = Field(
        default=6.0, description="Pre-promotion analysis of the preview (header traffic)."
    )
    auto_promote: bool = Field(
        default=True, description="Switch after the analysis; false waits for `release promote`."
    )
    scale_down_delay: Duration = Field(
        default=30.0,
        description="The old version stays up this long after the switch, so a rollback is "
        "instant; analysis goes on meanwhile.",
    )


class AnalysisSettings(Strict):
    """How a new version is judged against the stable one, from the gateways' metrics."""

    interval: Duration = Field(default=2.0, description="Time between two analyses.")
    min_requests: int = Field(
        default=20, ge=0, description="Fewer candidate requests than this: no verdict yet."
    )
    min_success_rate: float = Field(
        default=0.99, ge=0, le=1, description="Non-5xx share the candidate must keep."
    )
    success_tolerance: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Or no worse than the stable's success rate minus this, when lower.",
    )
    max_p99_increase: Duration = Field(
        default=0.1, description="Candidate p99 latency may exceed the stable's by this much."
    )
    max_p99: Duration | None = Field(default=None, description="Absolute p99 latency limit.")
    failure_limit: int = Field(
        default=2, ge=1, description="Failed analyses that roll the release back."
    )
    checks: list[str] = Field(
        default_factory=list,
        description="PromQL ending in a comparison, read as an alert rule reads it, over the "
        "candidate's own metrics and the gateways'; a check holds when its comparison keeps "
        "every series, e.g. 'sum(rate(bank_requests_total{code=~\"5..\"}[1m])) < 0.5'.",
    )


Strategy = Literal["rolling", "blue-green", "canary"]


class ReleasePolicy(Strict):
    """How a new version of this service is released (``alwayson deploy`` or ``apply``)."""

    strategy: Strategy = "rolling"
    rolling: RollingSettings = Field(default_factory=RollingSettings)
    blue_green: BlueGreenSettings = Field(default_factory=BlueGreenSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)


class Service(Strict):
    """A stateless micro-service run as a command in every workload site."""

    name: Name
    version: str = Field(min_length=1, max_length=64)
    run: str = Field(
        min_length=1,
        description="Command line, run in the spec's folder; a leading 'python' is the "
        "Python environment alwayson itself runs in. $HOST, $PORT, $ALWAYSON_*, env: keys and "
        "DATABASE_URL (as $NAME or ${NAME}) are replaced per instance; $$ is a literal $.",
    )
    port: int = Field(ge=1, le=65535)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[SecretUse] = Field(
        default_factory=list,
        description="Secrets (of the top-level secrets:) this service's instances get, as "
        "files in $CREDENTIALS_DIRECTORY only its identity can read, and optionally as env.",
    )
    replicas: Replicas = Field(
        default=1, description="Per workload site: one number for every site, or {site: n}."
    )
    health: Probe = Field(default_factory=lambda: Probe(tcp=True))
    liveness: Probe | None = Field(
        default=None,
        description="Restart the instance when this fails; default: the health check with a "
        "failure threshold three times as high.",
    )
    routes: list[Route] = Field(default_factory=list)
    stop_grace: Duration = Field(default=10.0, description="SIGTERM, then SIGKILL after this.")
    max_body: ByteSize | None = Field(
        default=None,
        description="Largest request body the gateway accepts for this service's routes "
        "(e.g. '1MiB'); larger gets 413. Default: the gateway's 10 MiB.",
    )
    release: ReleasePolicy = Field(default_factory=ReleasePolicy)
    autoscale: Autoscale | None = Field(
        default=None,
        description="Scale per site between min and max from live metrics; replicas is then "
        "the starting count.",
    )

    @field_validator("replicas")
    @classmethod
    def _non_negative(cls, value: Replicas) -> Replicas:
        counts = [value] if isinstance(value, int) else list(value.values())
        if any(c < 0 or c > MAX_REPLICAS for c in counts):
            raise ValueError(f"replicas must be between 0 and {MAX_REPLICAS}")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value

    def replicas_in(self, site: str) -> int:
        if isinstance(self.replicas, int):
            return self.replicas
        return self.replicas.get(site, 0)

    def liveness_probe(self) -> Probe:
        if self.liveness is not None:
            return self.liveness
        return self.health.model_copy(
            update={"failure_threshold": self.health.failure_threshold * 3}
        )


class LeaseSettings(Strict):
    """Who may write: the primary holds a lease on the witness and fences itself without it."""

    ttl: Duration = Field(default=6.0, description="How long one renewal lets a primary write.")
    margin: Duration = Field(
        default=2.0,
        description="The primary fences itself this long before its lease could expire.",
    )

    @model_validator(mode="after")
    def _margin_inside_ttl(self) -> LeaseSettings:
        if self.ttl < 1.5:
            raise ValueError("ttl must be at least 1.5s (renewals run every ttl/3)")
        if not 0 < self.margin < self.ttl * 2 / 3:
            raise ValueError(
                "margin must be above 0 and below two thirds of ttl, so a primary renews "
                "at least once before it has to fence"
            )
        return self


class BackupRetention(Strict):
    count: int = Field(default=7, ge=1, description="Keep at most this many base backups.")
    age: Duration = Field(default=7 * 86400.0, description="Remove base backups older than this.")


class BackupSettings(Strict):
    """Base backups on a schedule plus continuous WAL archiving, in both sites' repositories."""

    schedule: str | None = Field(
        default="0 2 * * *",
        description="Cron expression (controller's local time); null: only `backup create`.",
    )
    retention: BackupRetention = Field(default_factory=BackupRetention)
    verify: bool = Field(
        default=True, description="Restore every scheduled backup into a scratch instance."
    )
    keep_free: ByteSize = Field(
        default=ByteSize(256 * 1024 * 1024),
        description="Refuse a backup that would leave the repository's disk with less free.",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (like '0 2 * * *')")
        return value


class Objectives(Strict):
    rto: Duration = Field(default=10.0, description="Longest time without writes after a fault.")
    rpo: Duration = Field(default=0.0, description="Most acknowledged writes lost, as time.")


class Database(Strict):
    """A PostgreSQL database: a primary in one workload site, a standby in the other."""

    name: Name
    engine: Literal["postgres"] = "postgres"
    primary_site: Name
    replication: Literal["synchronous", "asynchronous"] = "synchronous"
    on_standby_loss: Literal["continue", "block"] = Field(
        default="continue",
        description="Synchronous mode without its standby: keep serving (alert: RPO=0 no "
        "longer holds) or block commits until it is back.",
    )
    standby_timeout: Duration = Field(
        default=5.0, description="How long commits may wait for a lost standby before continue."
    )
    services: list[Name] = Field(
        default_factory=list, description="Services that get DATABASE_URL for this database."
    )
    objectives: Objectives = Field(default_factory=Objectives)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    switchover_max_lag: ByteSize = Field(
        default=ByteSize(16 * 1024 * 1024),
        description="Refuse a switchover to a standby more than this many bytes behind.",
    )
    bin_dir: str | None = Field(
        default=None, description="PostgreSQL binaries; default: the pgserver wheel's."
    )
    settings: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra postgresql.conf settings."
    )


CONTROLLER_HOST = 6
"""The last octet of a workload site's controller address (``127.N.0.6``)."""


class Controller(Strict):
    api: ListenAddress = Field(default=DEFAULT_API, description="REST API and dashboard.")
    allow_remote_api: bool = Field(
        default=False,
        description="Let `api` listen on a non-loopback address. The API speaks plain HTTP "
        "with a bearer token: only on a management network you trust, or behind a TLS proxy.",
    )
    state_dir: str = Field(default=DEFAULT_STATE_DIR, description="Relative to the spec's folder.")
    reconcile_interval: Duration = 1.0

    @model_validator(mode="after")
    def _api_on_loopback(self) -> Controller:
        host = self.api.rpartition(":")[0].strip("[]")
        if not self.allow_remote_api and not is_loopback(host):
            raise ValueError(
                f"api {self.api} is not a loopback address: anyone who reaches it can try "
                "the token over plain HTTP. Bind 127.0.0.1 and reach it through SSH or a TLS "
                "proxy, or set allow_remote_api: true to accept that"
            )
        return self


class FrontDoor(Strict):
    listen: ListenAddress = "127.0.0.1:8080"


class Gateway(Strict):
    port: int = Field(default=8080, ge=1, le=65535, description="Per-site gateway port.")
    admin_port: int = Field(default=9901, ge=1, le=65535, description="Metrics and routes.")


DYNAMIC_UID_BASE = 61184
"""systemd's first dynamic uid: a range no distribution gives to users or packages."""


class Runtime(Strict):
    driver: Literal["local"] = "local"
    user: str | None = Field(
        default=None,
        description="One unprivileged user for every workload when alwayson runs as root. "
        "Unset (the default), each service gets an identity of its own (see uid_base), so "
        "no service can read another's environment or signal its processes.",
    )
    allow_root: bool = Field(
        default=False,
        description="Let `user` be root (uid 0): every workload then owns the machine.",
    )
    uid_base: int = Field(
        default=DYNAMIC_UID_BASE,
        ge=1000,
        le=65535 - 251,
        description="When alwayson runs as root and `user` is not set, each service runs as "
        "its own uid and gid, uid_base + the service's slot (1-250), with no passwd entry "
        "(like systemd's DynamicUser=); the default is systemd's dynamic range.",
    )

    @model_validator(mode="after")
    def _not_root(self) -> Runtime:
        if self.user is not None and not self.allow_root and _is_root(self.user):
            raise ValueError(
                f"user {self.user!r} is root: every service would run with full power over "
                "the machine, the database and each other. Name an unprivileged user (or "
                "leave it out for 'nobody'), or set allow_root: true to accept that"
            )
        return self


def _is_root(user: str) -> bool:
    if user == "root" or user == "0":
        return True
    try:
        return pwd.getpwnam(user).pw_uid == 0
    except KeyError:
        return False  # a missing user is refused at `up`, where it would be used


class PlatformSpec(Strict):
    """The whole platform: what ``alwayson.yaml`` declares."""

    platform: Name
    sites: list[Site] = Field(min_length=1)
    services: list[Service] = Field(default_factory=list)
    controller: Controller = Field(default_factory=Controller)
    front_door: FrontDoor = Field(default_factory=FrontDoor)
    gateway: Gateway = Field(default_factory=Gateway)
    runtime: Runtime = Field(default_factory=Runtime)
    databases: list[Database] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=Metrics)
    alerts: Alerts = Field(default_factory=Alerts)
    notifications: list[Receiver] = Field(
        default_factory=list, description="Receivers; with no routing, every alert goes to all."
    )
    drills: Drills = Field(default_factory=Drills)
    secrets: list[Secret] = Field(
        default_factory=list,
        description="Values kept out of the spec: from a file, the operator's environment "
        "or generated by the platform; plan and the audit log never show them.",
    )

    @property
    def workload_sites(self) -> list[Site]:
        return [s for s in self.sites if not s.witness]

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def subnet_of(self, site: str) -> str:
        for index, candidate in enumerate(self.sites, start=1):
            if candidate.name == site:
                return candidate.subnet or f"127.{index}.0.0/16"
        raise KeyError(site)

    def site_address(self, site: str, third: int, fourth: int) -> str:
        """An address inside a site's /16: ``127.N.third.fourth``."""
        base = ipaddress.ip_network(self.subnet_of(site)).network_address
        return str(base + third * 256 + fourth)

    def gateway_address(self, site: str) -> str:
        return self.site_address(site, 0, 1)

    @property
    def has_consensus(self) -> bool:
        """A spec with databases has an etcd member and a controller in every site."""
        return bool(self.databases)

    def controller_apis(self) -> dict[str, str]:
        """Every controller's API address, by site, the first the one the CLI asks first.

        Without databases there is one controller, at ``controller.api``. With them each
        site runs one: the witness site's at ``controller.api``, each workload site's on its
        own address (``127.N.0.6``) at the same port; one of them leads (etcd elects it)."""
        if not self.has_consensus:
            return {next(s.name for s in self.sites): self.controller.api}
        port = self.controller.api.rsplit(":", 1)[1]
        out: dict[str, str] = {}
        for site in sorted(self.sites, key=lambda s: not s.witness):
            out[site.name] = (
                self.controller.api
                if site.witness
                else f"{self.site_address(site.name, 0, CONTROLLER_HOST)}:{port}"
            )
        return out


Location = tuple[str | int, ...]


def consistency_problems(spec: PlatformSpec) -> list[tuple[Location, str]]:
    """Faults no single field can see. Each comes with the path of the field to fix."""
    problems: list[tuple[Location, str]] = []
    problems += _duplicates([s.name for s in spec.sites], "sites")
    problems += _duplicates([s.name for s in spec.services], "services")
    if spec.databases and spec.runtime.user == "nobody":
        problems.append(
            (
                ("runtime", "user"),
                "'nobody' is PostgreSQL's identity: services running as it could read its "
                "files and environment. Leave user unset (each service gets its own) or name "
                "another unprivileged user",
            )
        )
    problems += _observing_problems(spec)
    problems += secret_problems(spec)
    workload = [s.name for s in spec.sites if not s.witness]
    for index, drill in enumerate(spec.drills.schedules):
        if drill.site is not None and drill.site not in workload:
            problems.append(
                (
                    ("drills", "schedules", index, "site"),
                    f"{drill.site!r} is not a workload site (workload sites: "
                    f"{', '.join(workload)})",
                )
            )
    if not workload:
        problems.append((("sites",), "at least one site must run workloads (witness: false)"))
    witnesses = [i for i, s in enumerate(spec.sites) if s.witness]
    for extra in witnesses[1:]:
        problems.append((("sites", extra, "witness"), "at most one site can be the witness"))
    if len(spec.sites) > 250:
        problems.append((("sites",), "at most 250 sites"))
    if len(spec.services) > 250:
        problems.append((("services",), "at most 250 services"))
    subnets: dict[str, str] = {}
    for index, site in enumerate(spec.sites):
        subnet = spec.subnet_of(site.name)
        if subnet in subnets and subnets[subnet] != site.name:
            problems.append(
                (("sites", index, "subnet"), f"{subnet} is already the subnet of {subnets[subnet]}")
            )
        subnets[subnet] = site.name
    seen: dict[tuple[str | None, str | None], str] = {}
    for s_index, svc in enumerate(spec.services):
        if isinstance(svc.replicas, dict):
            for site_name in svc.replicas:
                if site_name not in workload:
                    problems.append(
                        (
                            ("services", s_index, "replicas", site_name),
                            f"{site_name!r} is not a workload site (workload sites: "
                            f"{', '.join(workload)})",
                        )
                    )
        order = svc.release.rolling.site_order
        for o_index, site_name in enumerate(order or []):
            if site_name not in workload:
                problems.append(
                    (
                        ("services", s_index, "release", "rolling", "site_order", o_index),
                        f"{site_name!r} is not a workload site (workload sites: "
                        f"{', '.join(workload)})",
                    )
                )
        if order is not None and len(set(order)) != len(order):
            problems.append(
                (
                    ("services", s_index, "release", "rolling", "site_order"),
                    "a site appears twice",
                )
            )
        for r_index, route in enumerate(svc.routes):
            key = (route.host, route.path)
            if key in seen and seen[key] != svc.name:
                problems.append(
                    (
                        ("services", s_index, "routes", r_index),
                        f"host={route.host} path={route.path} is already routed to {seen[key]}",
                    )
                )
            seen[key] = svc.name
    ports = {
        "front_door.listen": spec.front_door.listen,
        "controller.api": spec.controller.api,
    }
    if len(set(ports.values())) != len(ports):
        problems.append((("front_door", "listen"), "must differ from controller.api"))
    for site in spec.sites:
        if site.witness:
            continue
        for port in (spec.gateway.port, spec.gateway.admin_port):
            address = f"{spec.gateway_address(site.name)}:{port}"
            if address in (spec.front_door.listen, spec.controller.api):
                problems.append(
                    (
                        ("front_door", "listen")
                        if address == spec.front_door.listen
                        else ("controller", "api"),
                        f"{address} is site {site.name}'s gateway address; pick another",
                    )
                )
    if spec.gateway.port == spec.gateway.admin_port:
        problems.append((("gateway", "admin_port"), "must differ from gateway.port"))
    problems += _database_problems(spec, workload)
    return problems


MAX_DATABASES = 4


def _database_problems(spec: PlatformSpec, workload: list[str]) -> list[tuple[Location, str]]:
    problems = _duplicates([d.name for d in spec.databases], "databases")
    if not spec.databases:
        return problems
    if len(spec.databases) > MAX_DATABASES:
        problems.append((("databases",), f"at most {MAX_DATABASES} databases"))
    if not any(s.witness for s in spec.sites):
        problems.append(
            (
                ("databases",),
                "databases need a witness site (a site with witness: true) to hold the "
                "lease that decides which site may write",
            )
        )
    if len(workload) > 2:
        problems.append(
            (("databases",), "databases support one or two workload sites (primary, standby)")
        )
    services = {svc.name for svc in spec.services}
    users: dict[str, str] = {}
    for d_index, db in enumerate(spec.databases):
        if db.primary_site not in workload:
            problems.append(
                (
                    ("databases", d_index, "primary_site"),
                    f"{db.primary_site!r} is not a workload site (workload sites: "
                    f"{', '.join(workload)})",
                )
            )
        for s_index, name in enumerate(db.services):
            if name not in services:
                problems.append(
                    (
                        ("databases", d_index, "services", s_index),
                        f"no service named {name!r} (services: {', '.join(sorted(services))})",
                    )
                )
            elif name in users:
                problems.append(
                    (
                        ("databases", d_index, "services", s_index),
                        f"{name!r} already uses database {users[name]!r}; a service gets one "
                        "DATABASE_URL",
                    )
                )
            users.setdefault(name, db.name)
    return problems


def _observing_problems(spec: PlatformSpec) -> list[tuple[Location, str]]:
    out = _duplicates([r.name for r in spec.notifications], "notifications")
    out += [
        (("alerts", *loc), why)
        for loc, why in _duplicates([r.name for r in spec.alerts.rules], "rules")
    ]
    for index, rule in enumerate(spec.alerts.rules):
        why = rule_expr_problem(rule.expr)
        if why:
            out.append((("alerts", "rules", index, "expr"), why))
    for index, svc in enumerate(spec.services):
        for number, check in enumerate(svc.release.analysis.checks):
            why = check_expr_problem(check)
            if why:
                out.append((("services", index, "release", "analysis", "checks", number), why))
        scale = svc.autoscale
        if scale is not None and scale.max > MAX_REPLICAS:
            out.append(
                (("services", index, "autoscale", "max"), f"at most {MAX_REPLICAS} per site")
            )
    return out


def _duplicates(names: list[str], where: str) -> list[tuple[Location, str]]:
    out: list[tuple[Location, str]] = []
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            out.append(
                ((where, index, "name"), f"duplicate name {name!r} (also at index {first[name]})")
            )
        else:
            first[name] = index
    return out


def dump_spec(spec: PlatformSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")
