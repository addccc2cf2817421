"""Bounded input: a spec too large, too deep or expanding too far is refused before it is
built, with the position where it crossed the bound; and the two settings that give
workloads or the network too much power are refused unless explicitly allowed."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.spec.bounds import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES, check_bounds
from alwayson.spec.loading import load_spec_text
from alwayson.util.errors import SpecError

HEAD = """\
platform: bank
sites:
  - {name: jakarta}
  - {name: surabaya}
  - {name: witness, witness: true}
"""

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
"""


def load(text: str) -> None:
    load_spec_text(text, Path("/nowhere/alwayson.yaml"), display="alwayson.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(text)
    return [str(p) for p in caught.value.problems]


def test_an_alias_bomb_is_refused_where_it_expands_without_building_it() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.process_time()
    found = problems(HEAD + BOMB)
    used = time.process_time() - started
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before

    assert len(found) == 1
    assert found[0].startswith("alwayson.yaml:10:")  # the line of `c:`, where it passes 20,000
    assert f"more than {MAX_NODES:,} values" in found[0]
    # behaviour, not speed: 9**8 strings would take gigabytes; refusing builds nothing
    assert grown_kb < 50_000
    assert used < 5.0


def test_aliases_within_the_bound_still_load() -> None:
    text = HEAD + (
        "services:\n"
        "  - &svc {name: accounts, version: 1.0.0, run: python -m x, port: 8000}\n"
        "  - {<<: *svc, name: payments}\n"
    )
    load(text)


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deep_flow_nesting_is_refused_before_the_scanner_sees_it(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    found = problems(HEAD + "services: " + opener * 5000 + closer * 5000 + "\n")

    assert found == [
        f"alwayson.yaml:6:{len('services: ') + len(opener) * MAX_DEPTH + 1}: collections "
        f"nest more than {MAX_DEPTH} deep here; no spec field needs that"
    ]


def test_deep_block_nesting_is_refused() -> None:
    lines = "".join("  " * i + "-\n" for i in range(1, 200))
    found = problems(HEAD + "services:\n" + lines)

    assert len(found) == 1 and f"nest more than {MAX_DEPTH} deep" in found[0]


def test_brackets_inside_quotes_and_comments_do_not_count() -> None:
    text = HEAD + f"# {'[' * 100}\nservices: []  # {'{' * 100}\n"
    text += f"metrics: {{scrape_interval: 5s}}  # '{'[' * 100}'\n"
    load(text)
    check_bounds(f"a: '{'[' * 100}'\nb: \"{'{' * 100}\"\n", "x")


def test_a_spec_over_the_size_limit_is_refused_by_its_size() -> None:
    text = HEAD + "# " + "x" * MAX_SPEC_BYTES + "\n"

    found = problems(text)

    assert len(found) == 1 and f"the limit is {MAX_SPEC_BYTES:,}" in found[0]


def test_many_plain_values_are_counted_too() -> None:
    found = problems(HEAD + "services: [" + ",".join(["1"] * (MAX_NODES + 10)) + "]\n")

    assert len(found) == 1 and f"more than {MAX_NODES:,} values" in found[0]


@settings(max_examples=50, deadline=None)
@given(st.recursive(st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=4)))
def test_every_small_document_passes_the_bounds(value: object) -> None:
    import json

    check_bounds("a: " + json.dumps(value) + "\n", "x")  # JSON is YAML; none is near a bound


def test_root_workloads_are_refused_unless_allowed() -> None:
    found = problems(HEAD + "runtime: {user: root}\n")

    assert len(found) == 1
    assert found[0].startswith("alwayson.yaml:6:1: runtime: user 'root' is root")
    assert "allow_root: true" in found[0]
    load(HEAD + "runtime: {user: root, allow_root: true}\n")
    load(HEAD + "runtime: {user: nobody}\n")


@pytest.mark.parametrize("api", ["0.0.0.0:7070", "10.1.2.3:7070"])
def test_an_api_off_loopback_is_refused_unless_allowed(api: str) -> None:
    found = problems(HEAD + f"controller: {{api: '{api}'}}\n")

    assert len(found) == 1
    assert "is not a loopback address" in found[0] and "allow_remote_api: true" in found[0]
    load(HEAD + f"controller: {{api: '{api}', allow_remote_api: true}}\n")


@pytest.mark.parametrize("api", ["127.0.0.1:7070", "127.9.0.1:7070", "7070"])
def test_a_loopback_api_needs_no_allowance(api: str) -> None:
    load(HEAD + f"controller: {{api: '{api}'}}\n")
