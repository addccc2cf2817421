"""Loading ``alwayson.yaml``: a good spec loads; every bad one names file:line:column: path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from alwayson.spec.loading import LoadedSpec, load_spec_file, load_spec_text
from alwayson.util.errors import AlwaysonError, SpecError, SpecProblem

LoadSpec = Callable[[str], LoadedSpec]

SERVICE_LEDGER = """\
  - name: ledger
    version: "1"
    run: python -m bank.ledger
    port: 8001
"""


def problems_of(load: LoadSpec, text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(text)
    return [str(p) for p in caught.value.problems]


# ---------------------------------------------------------------- good specs


def test_good_spec_loads(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    loaded = load_spec(good_spec)

    spec = loaded.spec
    assert spec.platform == "digital-bank"
    assert [s.name for s in spec.sites] == ["jakarta", "surabaya", "witness"]
    assert [s.name for s in spec.workload_sites] == ["jakarta", "surabaya"]
    accounts = spec.service("accounts")
    assert accounts.version == "1.0.0"
    assert accounts.port == 8000
    assert accounts.health.http == "/healthz"
    assert accounts.health.interval == 1.0
    assert accounts.health.timeout == 0.5
    assert [(r.host, r.path) for r in accounts.routes] == [(None, "/accounts")]
    assert loaded.text == good_spec
    assert loaded.path == spec_file.resolve()
    assert loaded.folder == spec_file.resolve().parent
    assert loaded.state_dir == (spec_file.parent / ".alwayson").resolve()


def test_defaults_fill_what_the_spec_leaves_out(load_spec: LoadSpec, good_spec: str) -> None:
    spec = load_spec(good_spec).spec

    assert spec.controller.api == "127.0.0.1:7070"
    assert spec.front_door.listen == "127.0.0.1:8080"
    assert (spec.gateway.port, spec.gateway.admin_port) == (8080, 9901)
    accounts = spec.service("accounts")
    assert accounts.stop_grace == 10.0
    assert accounts.liveness_probe().failure_threshold == 3 * accounts.health.failure_threshold


def test_replicas_as_one_number_applies_to_every_workload_site(
    load_spec: LoadSpec, good_spec: str
) -> None:
    accounts = load_spec(good_spec).spec.service("accounts")

    assert accounts.replicas == 2
    assert accounts.replicas_in("jakarta") == 2
    assert accounts.replicas_in("surabaya") == 2


def test_replicas_per_site_default_to_zero_elsewhere(load_spec: LoadSpec, good_spec: str) -> None:
    text = good_spec.replace("replicas: 2", "replicas: {jakarta: 3}")

    accounts = load_spec(text).spec.service("accounts")

    assert accounts.replicas == {"jakarta": 3}
    assert accounts.replicas_in("jakarta") == 3
    assert accounts.replicas_in("surabaya") == 0


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("500ms", 0.5), ("1s", 1.0), ("1m30s", 90.0), ("2", 2.0), ("1.5", 1.5), ("1h", 3600.0)],
)
def test_durations_in_the_spec(
    load_spec: LoadSpec, good_spec: str, written: str, seconds: float
) -> None:
    text = good_spec.replace("routes:", f"stop_grace: {written}\n    routes:")

    assert load_spec(text).spec.service("accounts").stop_grace == seconds


def test_digest_is_stable_and_follows_the_content(load_spec: LoadSpec, good_spec: str) -> None:
    first = load_spec(good_spec).digest
    again = load_spec(good_spec + "# a comment changes nothing\n").digest
    changed = load_spec(good_spec.replace('"1.0.0"', '"1.0.1"')).digest

    assert first == again
    assert first != changed


def test_load_spec_text_without_a_display_name_uses_the_path(good_spec: str) -> None:
    path = Path("/nowhere/alwayson.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec_text(good_spec.replace("port: 8000", "port: 0"), path, check_commands=False)

    assert caught.value.problems[0].file == str(path)


def test_commands_are_not_checked_when_asked_not_to(good_spec: str, tmp_path: Path) -> None:
    text = good_spec.replace("python -m bank.accounts", "nosuchcommand-xyz")

    loaded = load_spec_text(text, tmp_path / "alwayson.yaml", check_commands=False)

    assert loaded.spec.service("accounts").run == "nosuchcommand-xyz"


# ---------------------------------------------------------------- bad specs, located


def test_unknown_field(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("    port: 8000\n", "    port: 8000\n    colour: red\n")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:12:5: services[0:accounts].colour: unknown field "
        "(check the spelling; `alwayson schema` lists every field)"
    ]


def test_unknown_top_level_field(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    assert problems_of(load_spec, good_spec + "colour: red\n") == [
        f"{spec_file}:15:1: colour: unknown field "
        "(check the spelling; `alwayson schema` lists every field)"
    ]


def test_wrong_type(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("port: 8000", "port: lots")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:11:5: services[0:accounts].port: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_out_of_range_port(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("port: 8000", "port: 70000")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:11:5: services[0:accounts].port: Input should be less than or equal to 65535"
    ]


def test_bad_duration(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("interval: 1s", "interval: 1sec")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:13:30: services[0:accounts].health.interval: "
        "'1sec' is not a duration; write it like '500ms', '2s', '1m30s' or '1h'"
    ]


def test_negative_duration(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("interval: 1s", "interval: -1")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:13:30: services[0:accounts].health.interval: a duration cannot be negative"
    ]


def test_replicas_naming_an_unknown_site(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("replicas: 2", "replicas: {jakarta: 1, bandung: 2}")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:12:28: services[0:accounts].replicas.bandung: "
        "'bandung' is not a workload site (workload sites: jakarta, surabaya)"
    ]


def test_replicas_naming_the_witness(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("replicas: 2", "replicas: {witness: 1}")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:12:16: services[0:accounts].replicas.witness: "
        "'witness' is not a workload site (workload sites: jakarta, surabaya)"
    ]


def test_negative_replicas(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("replicas: 2", "replicas: -1")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:12:5: services[0:accounts].replicas: replicas must be between 0 and 100"
    ]


def test_duplicate_service_names(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec + SERVICE_LEDGER.replace("ledger", "accounts")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:15:5: services[1:accounts].name: duplicate name 'accounts' (also at index 0)"
    ]


def test_duplicate_site_names(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("  - name: surabaya\n", "  - name: jakarta\n")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:4:5: sites[1:jakarta].name: duplicate name 'jakarta' (also at index 0)"
    ]


def test_two_witnesses(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("  - name: surabaya\n", "  - name: surabaya\n    witness: true\n")

    # The second witness in file order is the one to fix.
    assert problems_of(load_spec, text) == [
        f"{spec_file}:7:5: sites[2:witness].witness: at most one site can be the witness"
    ]


def test_no_workload_site(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("  - name: jakarta\n  - name: surabaya\n", "")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:2:1: sites: at least one site must run workloads (witness: false)"
    ]


def test_route_with_neither_host_nor_path(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("routes: [{path: /accounts}]", "routes: [{}]")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:14:14: services[0:accounts].routes[0]: a route needs a host, a path, or both"
    ]


def test_conflicting_routes(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec + SERVICE_LEDGER + "    routes:\n      - path: /accounts\n"

    assert problems_of(load_spec, text) == [
        f"{spec_file}:20:9: services[1:ledger].routes[0]: "
        "host=None path=/accounts is already routed to accounts"
    ]


def test_same_route_twice_in_one_service_is_no_conflict(
    load_spec: LoadSpec, good_spec: str
) -> None:
    text = good_spec.replace("[{path: /accounts}]", "[{path: /accounts}, {path: /accounts}]")

    assert len(load_spec(text).spec.service("accounts").routes) == 2


def test_run_command_that_does_not_exist(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("python -m bank.accounts", "nosuchcommand-xyz --flag")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:10:5: services[0:accounts].run: 'nosuchcommand-xyz' was not found on PATH"
    ]


def test_relative_command_that_does_not_exist(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("python -m bank.accounts", "./missing.sh")
    expected = (spec_file.parent / "missing.sh").resolve()

    assert problems_of(load_spec, text) == [
        f"{spec_file}:10:5: services[0:accounts].run: "
        f"'./missing.sh' does not exist (looked for {expected})"
    ]


def test_invalid_yaml_points_at_the_syntax_error(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    # The flow sequence opened on line 11 runs into the next key: the parser stops at the
    # colon after 'replicas' (line 12, column 13).
    text = good_spec.replace("port: 8000", "port: [8000")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:12:13: YAML: expected ',' or ']', but got ':'"
    ]


def test_tab_indentation_is_a_yaml_error(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("  - name: jakarta", "\t- name: jakarta")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:3:1: YAML: found character '\\t' that cannot start any token"
    ]


def test_duplicate_yaml_key(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("    port: 8000\n", "    port: 8000\n    port: 8001\n")

    assert problems_of(load_spec, text) == [
        f'{spec_file}:12:5: YAML: found duplicate key "port" with value "8001" '
        '(original value: "8000")'
    ]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just words\n"])
def test_empty_or_not_a_mapping(load_spec: LoadSpec, spec_file: Path, text: str) -> None:
    assert problems_of(load_spec, text) == [
        f"{spec_file}:1:1: the spec must be a mapping with 'platform:'"
    ]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(SpecError) as caught:
        load_spec_file(missing)

    assert [str(p) for p in caught.value.problems] == [
        f"{missing}:1:1: no such file; pass the spec with -f FILE"
    ]


def test_missing_field_points_at_its_parent(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("    port: 8000\n", "")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:8:5: services[0:accounts].port: Field required"
    ]


def test_every_problem_is_reported_at_once(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("port: 8000", "port: 0").replace("interval: 1s", "interval: x")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:11:5: services[0:accounts].port: Input should be greater than or equal to 1",
        f"{spec_file}:13:30: services[0:accounts].health.interval: "
        "'x' is not a duration; write it like '500ms', '2s', '1m30s' or '1h'",
    ]


def test_probe_needs_exactly_one_kind(load_spec: LoadSpec, good_spec: str, spec_file: Path) -> None:
    text = good_spec.replace("{http: /healthz,", "{http: /healthz, tcp: true,")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:13:5: services[0:accounts].health: "
        "give exactly one of http: /path, tcp: true or exec: 'command' (found http, tcp)"
    ]


def test_probe_timeout_longer_than_interval(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace("timeout: 500ms", "timeout: 2s")

    assert problems_of(load_spec, text) == [
        f"{spec_file}:13:5: services[0:accounts].health: timeout must not be longer than interval"
    ]


def test_subnet_taken_by_an_earlier_site(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec.replace(
        "  - name: surabaya\n", "  - name: surabaya\n    subnet: 127.1.0.0/16\n"
    )

    assert problems_of(load_spec, text) == [
        f"{spec_file}:5:5: sites[1:surabaya].subnet: 127.1.0.0/16 is already the subnet of jakarta"
    ]


def test_listen_host_must_be_an_address(
    load_spec: LoadSpec, good_spec: str, spec_file: Path
) -> None:
    text = good_spec + "front_door: {listen: 'localhost:8080'}\n"

    assert problems_of(load_spec, text) == [
        f"{spec_file}:15:14: front_door.listen: "
        "'localhost:8080': the host must be an IP address like 127.0.0.1"
    ]


def test_listen_port_written_as_a_bare_number_is_range_checked(
    load_spec: LoadSpec, good_spec: str
) -> None:
    with pytest.raises(SpecError):
        load_spec(good_spec + "front_door: {listen: 70000}\n")


def test_spec_problem_formats() -> None:
    assert str(SpecProblem("a.yaml", 3, 7, "sites", "bad")) == "a.yaml:3:7: sites: bad"
    assert str(SpecProblem("a.yaml", 1, 1, "", "bad")) == "a.yaml:1:1: bad"
    error = SpecError([SpecProblem("a.yaml", 1, 1, "", "x"), SpecProblem("a.yaml", 2, 1, "", "y")])
    assert isinstance(error, AlwaysonError)
    assert str(error) == "a.yaml:1:1: x\na.yaml:2:1: y"
