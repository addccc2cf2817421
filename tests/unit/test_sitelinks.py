"""``alwayson.util.sitelinks``: the cuts and slowness of the site links, in one file that
relays and gateways re-read; and how a gateway leaves out the backends of a cut site."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from alwayson.data.layout import agent_config
from alwayson.gateway.__main__ import parse_args
from alwayson.gateway.balancing import compile_table
from alwayson.gateway.exchanges import CoarseClock
from alwayson.gateway.metrics import GatewayMetrics
from alwayson.gateway.routes import Backend, Route, RouteTable
from alwayson.gateway.serving import Gateway
from alwayson.gateway.settings import GatewayConfig
from alwayson.gateway.upstreams import Upstream
from alwayson.runtime.base import InstanceSpec, Kind
from alwayson.spec.loading import LoadedSpec
from alwayson.util.sitelinks import Partitions, Slowness, read_partitions, write_partitions

LATENCY = Slowness(("west", "east"), delay=0.05, jitter=0.01)
NARROW = Slowness(("east", "witness"), delay=0.0, rate=125_000)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "partitions.json"


def loaded(path: Path) -> Partitions:
    partitions = Partitions(path)
    partitions.refresh()
    return partitions


def touch(path: Path, stamp: int) -> None:
    """A different modification time, whatever the file system clock's granularity."""
    os.utime(path, ns=(stamp, stamp))


# -- the file --------------------------------------------------------------------------


def test_cuts_and_slowness_round_trip(path: Path) -> None:
    write_partitions(path, [("west", "witness")], [LATENCY, NARROW])

    assert json.loads(path.read_text()) == {
        "cut": [["west", "witness"]],
        "slow": [
            {"between": ["west", "east"], "delay": 0.05, "jitter": 0.01, "rate": None},
            {"between": ["east", "witness"], "delay": 0.0, "jitter": 0.0, "rate": 125_000},
        ],
    }
    assert read_partitions(path) == ([("west", "witness")], [LATENCY, NARROW])
    partitions = loaded(path)
    assert partitions.cut == {frozenset(("west", "witness"))}
    assert partitions.slowness("west", "east") == LATENCY
    assert partitions.slowness("witness", "east") == NARROW
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_nothing_in_force_without_a_file(path: Path) -> None:
    assert read_partitions(path) == ([], [])
    partitions = loaded(path)
    assert partitions.cut == frozenset()
    assert partitions.slowness("west", "east") is None
    assert partitions.connected("west", "east")


def test_a_file_of_the_old_format_still_reads(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"cut": [["west", "east"]]}))

    partitions = loaded(path)

    assert not partitions.connected("east", "west")
    assert partitions.slowness("west", "east") is None
    assert read_partitions(path) == ([("west", "east")], [])


def test_slowness_is_the_same_either_way_round_and_never_within_a_site(path: Path) -> None:
    write_partitions(path, slow=[LATENCY])
    partitions = loaded(path)

    assert partitions.slowness("west", "east") is partitions.slowness("east", "west")
    assert partitions.slowness("west", "east") == LATENCY
    assert partitions.slowness("west", "west") is None
    assert partitions.slowness("west", "witness") is None
    assert partitions.connected("west", "east")  # slow is not cut


@pytest.mark.parametrize(
    "garbage",
    ["", "{not json", "[1, 2]", '{"cut": 5}', '{"slow": {"between": ["west", "east"]}}'],
)
def test_a_bad_file_keeps_what_was_in_force(path: Path, garbage: str) -> None:
    write_partitions(path, [("west", "witness")], [LATENCY])
    partitions = loaded(path)

    path.write_text(garbage)
    touch(path, 1)
    partitions.refresh()

    assert partitions.cut == {frozenset(("west", "witness"))}
    assert partitions.slowness("east", "west") == LATENCY
    # read_partitions calls it nothing, so that writing back what it read heals the file
    assert read_partitions(path) == ([], [])

    write_partitions(path, slow=[NARROW])
    partitions.refresh()
    assert partitions.cut == frozenset()
    assert partitions.slowness("west", "east") is None
    assert partitions.slowness("east", "witness") == NARROW


def test_a_bad_file_is_reported_once_not_at_every_refresh(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_partitions(path, [("west", "witness")])
    partitions = loaded(path)
    path.write_text("{not json")
    touch(path, 1)

    with caplog.at_level(logging.WARNING, logger="alwayson.util.sitelinks"):
        for _ in range(5):
            partitions.refresh()

    assert len(caplog.records) == 1 and "not valid" in caplog.records[0].getMessage()
    assert partitions.cut == {frozenset(("west", "witness"))}


def test_slowness_entries_of_the_wrong_shape_are_left_out(path: Path) -> None:
    path.parent.mkdir(parents=True)
    good = {"between": ["west", "east"], "delay": 0.02}
    path.write_text(
        json.dumps(
            {
                "slow": [
                    "west-east",
                    {"between": ["west"], "delay": 0.1},
                    {"between": ["west", "west"], "delay": 0.1},
                    {"between": ["east", "witness"], "delay": -1},
                    {"between": ["east", "witness"], "delay": 0.1, "rate": 0},
                    {"between": ["east", "witness"], "delay": "fast"},
                    good,
                ]
            }
        )
    )

    assert read_partitions(path) == ([], [Slowness(("west", "east"), 0.02)])
    partitions = loaded(path)
    assert partitions.slowness("east", "witness") is None
    assert partitions.slowness("east", "west") == Slowness(("west", "east"), 0.02)


@pytest.mark.parametrize(
    "fields",
    [
        {"between": ("west",), "delay": 0.1},
        {"between": ("west", "west"), "delay": 0.1},
        {"between": ("west", ""), "delay": 0.1},
        {"between": ("west", "east"), "delay": -0.1},
        {"between": ("west", "east"), "delay": float("inf")},
        {"between": ("west", "east"), "delay": 0.1, "jitter": -1.0},
        {"between": ("west", "east"), "delay": 0.1, "rate": 0},
        {"between": ("west", "east"), "delay": 0.1, "rate": 1.5},
    ],
)
def test_a_slowness_that_makes_no_sense_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Slowness(**fields)  # type: ignore[arg-type]


def test_healing_removes_the_slowness_too(path: Path) -> None:
    write_partitions(path, [("west", "east")], [NARROW])
    partitions = loaded(path)

    write_partitions(path)
    partitions.refresh()

    assert partitions.cut == frozenset()
    assert partitions.slowness("east", "witness") is None
    assert json.loads(path.read_text()) == {"cut": [], "slow": []}


def test_a_write_always_moves_the_modification_time_forward(path: Path) -> None:
    """Readers compare stamps: two writes of the same size within one tick of a coarse
    file system clock must still differ, so a write never lands at or before the time of
    the file it replaces (here, one dated an hour ahead)."""
    write_partitions(path, [("west", "east")])
    partitions = loaded(path)
    ahead = path.stat().st_mtime_ns + 3600 * 10**9
    touch(path, ahead)

    write_partitions(path, [("west", "fast")])  # the same size
    partitions.refresh()

    assert path.stat().st_mtime_ns > ahead
    assert partitions.cut == {frozenset(("west", "fast"))}


# -- gateways leave out the backends of a cut site --------------------------------------


def backend(name: str, site: str, port: int) -> Backend:
    return Backend(id=name, address=f"127.0.0.1:{port}", site=site, version="1")


TABLE = RouteTable(
    generation=3,
    site="west",
    routes=[
        Route(
            service="accounts",
            path_prefix="/accounts",
            backends=[backend("w1", "west", 8001), backend("e1", "east", 8002)],
        ),
        Route(service="loans", path_prefix="/loans", backends=[backend("e2", "east", 8003)]),
    ],
)


def test_compiling_leaves_out_the_backends_of_cut_off_sites() -> None:
    clock = CoarseClock(0.0)
    pools: dict[tuple[str, int], Upstream] = {}

    def upstream_for(host: str, port: int) -> Upstream:
        return pools.setdefault((host, port), Upstream(host, port, clock=clock))

    matcher, (accounts, loans) = compile_table(
        TABLE, "west", upstream_for, GatewayMetrics(), cut_off=frozenset({"east"})
    )

    assert [t.id for t in accounts.local] == ["w1"] and accounts.remote == ()
    assert accounts.reach == 1
    assert loans.local == () and loans.remote == () and loans.reach == 0
    assert sorted(pools) == [("127.0.0.1", 8001)]  # no pool for a backend out of reach
    assert matcher.match(b"", b"/loans/1") is loans  # the route stays: it answers 503


def plan_ids(gateway: Gateway, url: bytes) -> list[str]:
    plan = gateway.context.matcher.match(b"", url)
    assert plan is not None
    return [t.id for t in (*plan.local, *plan.remote)]


def test_a_gateway_follows_the_cuts_of_its_own_site(path: Path) -> None:
    config = GatewayConfig(
        listen=("127.0.0.1:1",), admin="127.0.0.1:2", site="west", partitions_file=path
    )
    gateway = Gateway(config, lambda: None)
    gateway.install(TABLE)
    assert not gateway.follow_partitions()  # no file: nothing cut, nothing rebuilt
    before = gateway.context.matcher

    write_partitions(path, [("east", "witness")], [LATENCY])  # not this site's cut
    assert not gateway.follow_partitions()
    assert gateway.context.matcher is before and plan_ids(gateway, b"/loans") == ["e2"]

    write_partitions(path, [("east", "west"), ("east", "witness")])
    assert gateway.follow_partitions()
    old_plans = [before.match(b"", b"/accounts"), before.match(b"", b"/loans")]
    assert all(p is not None and p.stale for p in old_plans)  # in-flight requests re-match
    assert plan_ids(gateway, b"/accounts") == ["w1"]
    assert plan_ids(gateway, b"/loans") == []
    assert gateway.cut_off == {"east"}
    assert not gateway.follow_partitions()  # unchanged file: nothing to do

    # A table pushed during the cut is compiled without the cut site too.
    gateway.install(TABLE.model_copy(update={"generation": 4}))
    assert plan_ids(gateway, b"/loans") == []

    write_partitions(path)
    assert gateway.follow_partitions()
    assert plan_ids(gateway, b"/accounts") == ["w1", "e1"]
    assert plan_ids(gateway, b"/loans") == ["e2"]
    assert gateway.generation == 4 and gateway.cut_off == frozenset()


def test_a_gateway_without_a_partitions_file_never_rebuilds() -> None:
    config = GatewayConfig(listen=("127.0.0.1:1",), admin="127.0.0.1:2", site="west")
    gateway = Gateway(config, lambda: None)
    gateway.install(TABLE)
    assert not gateway.follow_partitions()
    assert plan_ids(gateway, b"/loans") == ["e2"]


# -- every gateway and front door reads the file the site agents read ---------------------


def test_gateways_and_front_doors_read_the_agents_partitions_file(
    load_spec: Callable[[str], LoadedSpec],
    good_spec: str,
    desire: Callable[..., dict[str, InstanceSpec]],
    tmp_path: Path,
) -> None:
    loaded = load_spec(good_spec)
    desired = desire(loaded)
    agents_file = agent_config(loaded.spec, "jakarta", tmp_path / ".alwayson", None, {})
    components = [i for i in desired.values() if i.kind in (Kind.GATEWAY, Kind.FRONTDOOR)]

    assert len(components) == 4
    for inst in components:
        given = inst.argv[inst.argv.index("--partitions") + 1]
        assert given == agents_file.partitions_file
        config = parse_args(inst.argv[3:])
        assert config.partitions_file == Path(agents_file.partitions_file)
