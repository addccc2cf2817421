"""The spec models on their own: names, subnets, probes, env and site addresses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alwayson.spec.models import (
    PlatformSpec,
    Probe,
    Route,
    Service,
    Site,
    consistency_problems,
    dump_spec,
)


def make_spec(**changes: object) -> PlatformSpec:
    data: dict[str, object] = {
        "platform": "digital-bank",
        "sites": [{"name": "jakarta"}, {"name": "surabaya"}, {"name": "witness", "witness": True}],
        "services": [
            {"name": "accounts", "version": "1.0.0", "run": "python -m x", "port": 8000},
        ],
    }
    data.update(changes)
    return PlatformSpec.model_validate(data)


@pytest.mark.parametrize("name", ["a", "ab", "accounts", "core-banking", "s3", "a" * 40])
def test_valid_names(name: str) -> None:
    assert Site(name=name).name == name


@pytest.mark.parametrize("name", ["", "A", "Jakarta", "1st", "-a", "a-", "a_b", "a" * 41])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValidationError):
        Site(name=name)


def test_default_subnets_follow_the_order_of_sites() -> None:
    spec = make_spec()

    assert spec.subnet_of("jakarta") == "127.1.0.0/16"
    assert spec.subnet_of("surabaya") == "127.2.0.0/16"
    assert spec.subnet_of("witness") == "127.3.0.0/16"
    assert spec.site_address("surabaya", 4, 7) == "127.2.4.7"
    assert spec.gateway_address("jakarta") == "127.1.0.1"
    with pytest.raises(KeyError):
        spec.subnet_of("bandung")


def test_explicit_subnet_is_used() -> None:
    spec = make_spec(sites=[{"name": "jakarta", "subnet": "127.42.0.0/16"}])

    assert spec.site_address("jakarta", 1, 2) == "127.42.1.2"


@pytest.mark.parametrize("subnet", ["10.0.0.0/16", "127.1.0.0/24", "127.1.2.0/16", "::1/128"])
def test_subnet_must_be_a_loopback_16(subnet: str) -> None:
    with pytest.raises(ValidationError):
        Site(name="jakarta", subnet=subnet)


def test_probe_defaults_to_tcp_for_services() -> None:
    svc = Service(name="accounts", version="1", run="python -m x", port=8000)

    assert svc.health.tcp is True
    assert svc.liveness_probe().failure_threshold == 9
    assert svc.liveness_probe().tcp is True


def test_explicit_liveness_is_kept() -> None:
    liveness = Probe(http="/live", failure_threshold=2)
    svc = Service(name="accounts", version="1", run="python -m x", port=8000, liveness=liveness)

    assert svc.liveness_probe() == liveness


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"http": "/h", "tcp": True},
        {"http": "healthz"},
        {"tcp": True, "interval": 1, "timeout": 2},
    ],
)
def test_invalid_probes(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Probe.model_validate(fields)


def test_exec_probe() -> None:
    assert Probe(exec="true").exec == "true"


@pytest.mark.parametrize("fields", [{}, {"path": "accounts"}])
def test_invalid_routes(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Route.model_validate(fields)


def test_env_names_must_be_valid() -> None:
    with pytest.raises(ValidationError, match="'1BAD' is not a valid environment variable name"):
        Service(name="accounts", version="1", run="x", port=1, env={"1BAD": "x"})


@pytest.mark.parametrize("replicas", [-1, 201, {"jakarta": -1}, {"jakarta": 201}])
def test_replicas_range(replicas: object) -> None:
    with pytest.raises(ValidationError, match="replicas must be between 0 and 100"):
        Service.model_validate(
            {"name": "accounts", "version": "1", "run": "x", "port": 1, "replicas": replicas}
        )


def test_models_are_frozen() -> None:
    spec = make_spec()

    with pytest.raises(ValidationError):
        spec.platform = "other"  # type: ignore[misc]


def test_unknown_service_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        make_spec().service("ledger")


def test_colliding_front_door_and_api() -> None:
    spec = make_spec(front_door={"listen": "127.0.0.1:7070"})

    assert consistency_problems(spec) == [
        (("front_door", "listen"), "must differ from controller.api")
    ]


def test_proxy_and_admin_ports_must_differ() -> None:
    spec = make_spec(gateway={"port": 9000, "admin_port": 9000})

    assert consistency_problems(spec) == [
        (("gateway", "admin_port"), "must differ from gateway.port")
    ]


def test_dump_writes_durations_as_text() -> None:
    dumped = dump_spec(make_spec())

    health = dumped["services"][0]["health"]
    assert (health["interval"], health["timeout"], health["start_timeout"]) == (
        "1s",
        "500ms",
        "30s",
    )
    assert PlatformSpec.model_validate(dumped) == make_spec()


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"sites": [{"name": "jakarta", "subnet": "127.0.0.0/16"}]}, id="subnet-127.0"),
        pytest.param({"front_door": {"listen": "127.1.0.1:8080"}}, id="listen-on-site-1"),
    ],
)
def test_front_door_cannot_share_a_site_proxy_address(changes: dict[str, object]) -> None:
    spec = make_spec(**changes)
    clash = f"{spec.gateway_address('jakarta')}:{spec.gateway.port}"
    assert clash == spec.front_door.listen

    assert consistency_problems(spec) != []
