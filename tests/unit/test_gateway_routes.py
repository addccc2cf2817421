"""Route table validation and its file copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alwayson.gateway.routes import (
    InvalidRouteTable,
    RouteTable,
    load_table_file,
    parse_table,
    save_table_file,
    standalone_table,
)


def table_document(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "generation": 7,
        "site": "jakarta",
        "routes": [
            {
                "service": "accounts",
                "hosts": ["accounts.bank.local"],
                "path_prefix": "/accounts",
                "backends": [
                    {
                        "id": "accounts-jakarta-1",
                        "address": "127.1.1.1:8000",
                        "site": "jakarta",
                        "version": "1.0.0",
                        "weight": 100,
                    }
                ],
            }
        ],
    }
    document.update(overrides)
    return document


def test_the_documented_example_is_valid() -> None:
    table = parse_table(json.dumps(table_document()))
    assert table.generation == 7
    route = table.routes[0]
    assert route.service == "accounts"
    assert route.backends[0].host_port() == ("127.1.1.1", 8000)


def test_defaults_weight_and_empty_hosts() -> None:
    document = table_document()
    document["routes"][0]["hosts"] = []
    del document["routes"][0]["backends"][0]["weight"]
    table = parse_table(json.dumps(document))
    assert table.routes[0].backends[0].weight == 100
    assert table.routes[0].hosts == []


def test_hosts_are_lower_cased_and_deduplicated() -> None:
    document = table_document()
    document["routes"][0]["hosts"] = ["Accounts.Bank.Local", "accounts.bank.local"]
    table = parse_table(json.dumps(document))
    assert table.routes[0].hosts == ["accounts.bank.local"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["routes"][0]["backends"][0].update(address="nowhere"), "address"),
        (lambda d: d["routes"][0]["backends"][0].update(address="1.2.3.4:99999"), "port"),
        (
            lambda d: d["routes"][0]["backends"][0].update(address="http://1.2.3.4:80"),
            "host:port",
        ),
        (lambda d: d["routes"][0]["backends"][0].update(weight=-1), "weight"),
        (lambda d: d["routes"][0].update(path_prefix="accounts"), "must start with '/'"),
        (lambda d: d["routes"][0].update(path_prefix="/a?b"), "plain path"),
        (lambda d: d["routes"][0].update(hosts=["bank.local:8080"]), "without a port"),
        (lambda d: d["routes"][0].update(service=""), "service"),
        (lambda d: d.update(generation=-1), "generation"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["routes"][0]["backends"].append(dict(d["routes"][0]["backends"][0])), "twice"),
        (lambda d: d["routes"].append(dict(d["routes"][0], service="other")), "both match"),
    ],
)
def test_bad_tables_are_rejected_with_the_path_of_the_fault(mutate: Any, expected: str) -> None:
    document = table_document()
    mutate(document)
    with pytest.raises(InvalidRouteTable) as caught:
        parse_table(json.dumps(document))
    assert expected in str(caught.value)
    assert str(caught.value).startswith("invalid route table: ")


def test_a_trailing_slash_does_not_make_a_different_route() -> None:
    document = table_document()
    document["routes"].append(dict(document["routes"][0], path_prefix="/accounts/"))
    with pytest.raises(InvalidRouteTable, match="both match"):
        parse_table(json.dumps(document))


def test_not_json_is_a_clear_error() -> None:
    with pytest.raises(InvalidRouteTable, match="invalid route table"):
        parse_table(b"{not json")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "routes.json"
    table = parse_table(json.dumps(table_document()))
    save_table_file(path, table)
    assert load_table_file(path) == table
    assert [p.name for p in path.parent.iterdir()] == ["routes.json"]  # no temp file left


def test_load_missing_file_is_none(tmp_path: Path) -> None:
    assert load_table_file(tmp_path / "absent.json") is None


def test_load_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text('{"generation": "x"}')
    with pytest.raises(InvalidRouteTable, match=str(path)):
        load_table_file(path)


def test_standalone_table_is_one_catch_all_in_the_own_site() -> None:
    table = standalone_table("jakarta", ["http://127.0.0.1:9000", "127.0.0.1:9001"])
    assert isinstance(table, RouteTable)
    (route,) = table.routes
    assert route.hosts == [] and route.path_prefix is None
    assert [b.address for b in route.backends] == ["127.0.0.1:9000", "127.0.0.1:9001"]
    assert {b.site for b in route.backends} == {"jakarta"}
