"""``$NAME`` in a ``run`` line: expanded per word from the instance's environment, and a
name the instance will not have is a spec error (or a refused deploy), never a crash loop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.control.desired import Context, Variant, allocate_slots, desired_instances
from alwayson.control.releasing import check_command
from alwayson.spec.commands import (
    PLATFORM_VARIABLES,
    BadVariable,
    CommandNotFound,
    check_run,
    expand,
    resolve_command,
    service_variables,
)
from alwayson.spec.loading import LoadedSpec, load_spec_text
from alwayson.util.errors import PermanentError, SpecError

FILE = "alwayson.yaml"
ENV = {"HOST": "127.1.1.1", "PORT": "8000", "LOG_LEVEL": "info", "SPACED": "a b"}

SPEC = """\
platform: shop
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: ledger
    version: "1"
    run: python -m ledger --bind $HOST:$PORT
    port: 8001
  - name: web
    version: "1"
    run: {run}
    port: 8002
    env: {{LOG_LEVEL: info}}
databases:
  - name: bank
    primary_site: jakarta
    services: [ledger]
"""


def load(run: str, tmp_path: Path) -> LoadedSpec:
    """The spec above with ``web``'s run line, loaded the way ``apply`` loads it."""
    return load_spec_text(SPEC.format(run=run), tmp_path / FILE, display=FILE)


def problems_of(run: str, tmp_path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(run, tmp_path)
    return [str(p) for p in caught.value.problems]


# ---------------------------------------------------------------- expansion


@pytest.mark.parametrize(
    ("word", "expanded"),
    [
        ("$HOST", "127.1.1.1"),
        ("${HOST}", "127.1.1.1"),
        ("$HOST:$PORT", "127.1.1.1:8000"),
        ("${HOST}:${PORT}", "127.1.1.1:8000"),
        ("--bind=$HOST", "--bind=127.1.1.1"),
        ("${PORT}0", "80000"),
        ("$PORT.5", "8000.5"),
        ("$LOG_LEVEL-x", "info-x"),
        ("$$", "$"),
        ("$$HOST", "$HOST"),
        ("$$$HOST", "$127.1.1.1"),
        ("cost: 5$$", "cost: 5$"),
        ("no dollar", "no dollar"),
        ("", ""),
    ],
)
def test_each_word_is_expanded_from_the_environment(word: str, expanded: str) -> None:
    assert expand([word], ENV) == [expanded]


def test_a_value_with_spaces_stays_one_word_and_is_not_expanded_again() -> None:
    env = {**ENV, "TRICK": "$HOST"}

    assert expand(["--name", "$SPACED", "$TRICK"], env) == ["--name", "a b", "$HOST"]


def test_an_unknown_name_says_which_and_lists_the_known_ones() -> None:
    with pytest.raises(BadVariable) as caught:
        expand(["--port", "$PROT"], ENV)

    assert str(caught.value) == (
        "$PROT is not set for this service (known: HOST, PORT, LOG_LEVEL, SPACED); "
        "write $$ for a literal $"
    )
    assert isinstance(caught.value, CommandNotFound)  # every caller already handles it


@pytest.mark.parametrize(
    ("word", "says"),
    [
        ("$", "'$' has a '$' at its end"),
        ("5$", "'5$' has a '$' at its end"),
        ("$-x", "has '$-', not a variable"),
        ("$1", "has '$1', not a variable"),
        ("a $ b", "has '$ ', not a variable"),
        ("${", "'${' must be followed by a name and '}'"),
        ("${HOST", "'${' must be followed by a name and '}'"),
        ("${}", "'${' must be followed by a name and '}'"),
        ("${1X}", "'${' must be followed by a name and '}'"),
        ("${HOST:-x}", "'${' must be followed by a name and '}'"),
    ],
)
def test_a_dollar_that_names_nothing_is_refused(word: str, says: str) -> None:
    with pytest.raises(BadVariable) as caught:
        expand([word], ENV)

    assert says in str(caught.value)
    assert str(caught.value).endswith("write $$ for a literal $")


def test_resolve_command_expands_after_splitting_so_quotes_stay_shlex_s(tmp_path: Path) -> None:
    argv = resolve_command("python -m app '$HOST $PORT' \"$HOST\" --x=${SPACED}", tmp_path, ENV)

    assert argv == [sys.executable, "-m", "app", "127.1.1.1 8000", "127.1.1.1", "--x=a b"]


def test_resolve_command_without_an_environment_leaves_words_alone(tmp_path: Path) -> None:
    assert resolve_command("python $HOST", tmp_path) == [sys.executable, "$HOST"]


def test_the_program_word_is_expanded_before_it_is_looked_up(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "serve"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)

    argv = resolve_command("$SERVER --port $PORT", tmp_path, {"SERVER": "./bin/serve", **ENV})

    assert argv == [str(script.resolve()), "--port", "8000"]
    check_run("$SERVER --port $PORT", tmp_path, ["SERVER", "PORT"])  # found per instance


# ---------------------------------------------------------------- properties


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text().filter(lambda w: "$" not in w), max_size=5))
def test_words_without_a_dollar_are_unchanged(words: list[str]) -> None:
    assert expand(words, ENV) == words
    assert expand(words, {}) == words


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_escaped_text_round_trips(text: str) -> None:
    assert expand([text.replace("$", "$$")], {}) == [text]


@settings(max_examples=300, deadline=None)
@given(NAMES, st.text(), st.text(), st.text())
def test_braced_name_is_replaced_by_its_value_between_any_text(
    name: str, value: str, before: str, after: str
) -> None:
    word = f"{before.replace('$', '$$')}${{{name}}}{after.replace('$', '$$')}"

    assert expand([word], {name: value}) == [before + value + after]


@settings(max_examples=200, deadline=None)
@given(NAMES, NAMES)
def test_spec_check_and_expansion_agree_on_what_is_known(known: str, used: str) -> None:
    run = f"python -m app --x ${used}"
    env = {known: "v"}
    try:
        expand([f"${used}"], env)
    except BadVariable:
        with pytest.raises(BadVariable):
            check_run(run, Path("/nowhere"), [known])
    else:
        check_run(run, Path("/nowhere"), [known])


# ---------------------------------------------------------------- when the spec loads


def test_a_spec_using_known_variables_loads(tmp_path: Path) -> None:
    loaded = load("python -m web --host $HOST --port ${PORT} --log $LOG_LEVEL", tmp_path)

    ledger, web = loaded.spec.services
    assert service_variables(loaded.spec, web) == [*PLATFORM_VARIABLES, "LOG_LEVEL"]
    assert service_variables(loaded.spec, ledger) == [*PLATFORM_VARIABLES, "DATABASE_URL"]


def test_an_unknown_variable_is_a_spec_error_naming_the_field(tmp_path: Path) -> None:
    (problem,) = problems_of("python -m web --port $PROT", tmp_path)

    assert problem == (
        "alwayson.yaml:14:5: services[1:web].run: $PROT is not set for this service "
        "(known: HOST, PORT, ALWAYSON_SITE, ALWAYSON_SERVICE, ALWAYSON_INSTANCE, "
        "ALWAYSON_VERSION, ALWAYSON_GATEWAY, ALWAYSON_PLATFORM, LOG_LEVEL); "
        "write $$ for a literal $"
    )


def test_database_url_only_for_a_service_a_database_lists(tmp_path: Path) -> None:
    (problem,) = problems_of("python -m web --db $DATABASE_URL", tmp_path)

    assert "services[1:web].run: $DATABASE_URL is not set for this service" in problem


def test_a_lone_dollar_is_a_spec_error(tmp_path: Path) -> None:
    (problem,) = problems_of("python -m web --price 5$", tmp_path)

    assert problem.startswith("alwayson.yaml:14:5: services[1:web].run: '5$' has a '$'")
    assert load("python -m web --price 5$$", tmp_path).spec.services[1].run.endswith("5$$")


def test_unchecked_loads_do_not_look_at_variables(tmp_path: Path) -> None:
    text = SPEC.format(run="python -m web --port $PROT")

    loaded = load_spec_text(text, tmp_path / FILE, check_commands=False)

    assert loaded.spec.services[1].run.endswith("$PROT")


# ---------------------------------------------------------------- instances and releases


def context(loaded: LoadedSpec, tmp_path: Path) -> Context:
    slots = allocate_slots(loaded.spec, {})
    return Context(
        loaded.folder, tmp_path / "state", None, slots, {"bank": {"app": "pw", "superuser": "su"}}
    )


def test_instances_get_their_own_address_in_argv(tmp_path: Path) -> None:
    loaded = load("python -m web --bind ${HOST}:${PORT} --log $LOG_LEVEL", tmp_path)

    desired = desired_instances(loaded.spec, {}, context(loaded, tmp_path))

    web = desired["web-surabaya-1"]
    assert web.argv == [sys.executable, "-m", "web", "--bind", f"{web.host}:8002", "--log", "info"]
    assert desired["web-jakarta-1"].argv[4] == f"{desired['web-jakarta-1'].host}:8002"
    assert desired["web-jakarta-1"].host != web.host
    ledger = desired["ledger-jakarta-1"]
    assert ledger.argv[-1] == f"{ledger.host}:8001"


def test_every_variable_the_spec_allows_is_one_an_instance_has(tmp_path: Path) -> None:
    # The spec check (commands.py) and the environment (desired.py) are two lists: held
    # together here, so a variable added to one and not the other fails this test.
    loaded = load("python -m web", tmp_path)
    desired = desired_instances(loaded.spec, {}, context(loaded, tmp_path))

    for svc in loaded.spec.services:
        inst = desired[f"{svc.name}-jakarta-1"]
        given = set(inst.env) - {"PYTHONUNBUFFERED"}  # set for Python, not for run lines
        assert given == set(service_variables(loaded.spec, svc)), svc.name


def test_a_release_candidate_is_expanded_with_its_own_version(tmp_path: Path) -> None:
    loaded = load("python -m web --version $ALWAYSON_VERSION", tmp_path)
    web = loaded.spec.services[1]
    candidate = "python -m web --port $PORT --version ${ALWAYSON_VERSION}"
    variants = {
        "web": [
            Variant(web.version, web.run, color="a", counts={"jakarta": 1}),
            Variant("2", candidate, color="b", counts={"jakarta": 1}),
        ]
    }

    desired = desired_instances(loaded.spec, {}, context(loaded, tmp_path), variants)

    assert desired["web-jakarta-1"].argv[-2:] == ["--version", "1"]
    assert desired["web-jakarta-101"].argv[-4:] == ["--port", "8002", "--version", "2"]


def test_deploy_refuses_an_unknown_variable_with_the_same_message(tmp_path: Path) -> None:
    loaded = load("python -m web", tmp_path)
    known = service_variables(loaded.spec, loaded.spec.services[1])

    check_command("python -m web --port $PORT --log $LOG_LEVEL", tmp_path, "web", known)
    with pytest.raises(PermanentError) as caught:
        check_command("python -m web --port $PROT", tmp_path, "web", known)

    assert "web: run command 'python -m web --port $PROT': $PROT is not set for this " in str(
        caught.value
    )
    assert str(caught.value).endswith("write $$ for a literal $; nothing changed")
