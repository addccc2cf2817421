"""``secrets:``: declared once, taken from a file, the operator's environment or made by
the platform; kept 0600; given to a service's instances as files (and env when asked);
shown by plan and audit only as ``(secret changed)``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from tests.unit.controlparts import memory_controller

from alwayson.control.desired import Context, allocate_slots, desired_instances
from alwayson.control.secrets import changes, load, resolve, save
from alwayson.runtime.users import Identity, deliver_secrets
from alwayson.spec.loading import load_spec_text
from alwayson.spec.models import PlatformSpec
from alwayson.spec.planning import plan
from alwayson.util.errors import PermanentError, SpecError

HEAD = """\
platform: bank
sites:
  - {name: jakarta}
  - {name: surabaya}
  - {name: witness, witness: true}
"""
SPEC = (
    HEAD
    + """\
secrets:
  - {name: signing-key, generate: 32}
  - {name: partner-token, env: PARTNER_TOKEN}
  - {name: tls-key, file: keys/tls.key}
services:
  - name: auth
    version: "1.0.0"
    run: python -m x
    port: 8000
    secrets: [{name: signing-key, env: AUTH_SIGNING_KEY}, {name: tls-key}]
  - {name: accounts, version: "1.0.0", run: python -m x, port: 8001}
"""
)


def spec(text: str, folder: Path = Path("/nowhere")) -> PlatformSpec:
    return load_spec_text(text, folder / "alwayson.yaml", check_commands=False).spec


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        spec(text)
    return [str(p) for p in caught.value.problems]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "tls.key").write_text("-----BEGIN KEY-----\n")
    return tmp_path


def test_a_secret_has_exactly_one_source_and_services_name_declared_ones() -> None:
    both = problems(HEAD + "secrets: [{name: k, env: K, generate: 32}]\n")
    assert "exactly one of file, env or generate (env, generate)" in both[0]
    unknown = problems(
        HEAD + "services: [{name: a, version: '1', run: x, port: 1, secrets: [{name: nope}]}]\n"
    )
    assert "services[0:a].secrets[0:nope].name: no secret 'nope' under secrets:" in unknown[0]
    clash = problems(
        HEAD + "secrets: [{name: k, generate: 16}]\n"
        "services: [{name: a, version: '1', run: x, port: 1, env: {K: v},"
        " secrets: [{name: k, env: K}]}]\n"
    )
    assert "K is also in this service's env" in clash[0]
    twice = problems(HEAD + "secrets: [{name: k, generate: 16}, {name: k, generate: 16}]\n")
    assert "'k' is declared twice" in twice[0]


def test_values_come_from_each_source_and_a_generated_one_is_kept(
    folder: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    loaded = spec(SPEC, folder)

    first = resolve(loaded, folder, {"partner-token": "p4rtner"}, state)
    save(state, first)
    again = resolve(loaded, folder, {"partner-token": "p4rtner"}, state)

    assert first["tls-key"] == "-----BEGIN KEY-----" and first["partner-token"] == "p4rtner"
    assert len(first["signing-key"]) >= 40 and again == first  # generated once, then kept
    assert load(state, loaded) == first
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (state / "secrets").iterdir()}
    assert modes == {0o600}


def test_a_missing_source_refuses_everything_naming_the_field(folder: Path, tmp_path: Path) -> None:
    (folder / "keys" / "tls.key").unlink()

    with pytest.raises(PermanentError) as refused:
        resolve(spec(SPEC, folder), folder, {}, tmp_path / "state")

    message = str(refused.value)
    assert "secrets[1:partner-token].env: $PARTNER_TOKEN is not set" in message
    assert "secrets[2:tls-key].file: cannot read" in message
    assert message.endswith("Nothing was changed.")
    assert not (tmp_path / "state" / "secrets").exists()


def test_plan_shows_a_rotation_never_a_value(folder: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    loaded = spec(SPEC, folder)
    values = resolve(loaded, folder, {"partner-token": "old-value"}, state)

    added = [str(c) for c in changes(loaded, values, state)]
    save(state, values)
    rotated = resolve(loaded, folder, {"partner-token": "new-value"}, state)
    shown = [str(c) for c in changes(loaded, rotated, state)]

    assert added == [
        "+ secret signing-key: from generated (32 bytes)",
        "+ secret partner-token: from $PARTNER_TOKEN of the operator",
        "+ secret tls-key: from file keys/tls.key",
    ]
    assert shown == [
        "~ secret partner-token: (secret changed): the instances that use it are replaced"
    ]
    assert "value" not in " ".join(shown)


def test_plan_never_prints_the_value_of_an_env_var_named_like_a_secret() -> None:
    before = HEAD + (
        "services: [{name: auth, version: '1', run: x, port: 1,"
        " env: {AUTH_SIGNING_KEY: old-key, LOG_LEVEL: info}}]\n"
    )
    after = before.replace("old-key", "new-key").replace("info", "debug")

    shown = [str(c) for c in plan(spec(after), spec(before), {})]

    assert shown == [
        "~ service auth: env ~AUTH_SIGNING_KEY (secret changed), ~LOG_LEVEL 'info' → 'debug'"
    ]
    assert "old-key" not in shown[0] and "new-key" not in shown[0]


def test_instances_get_their_secrets_as_files_and_env_and_roll_when_one_rotates(
    folder: Path, tmp_path: Path
) -> None:
    loaded = spec(SPEC, folder)
    state = tmp_path / "state"
    slots = allocate_slots(loaded, {})
    values = {"signing-key": "s1", "tls-key": "k", "partner-token": "p"}

    def auth(secrets: dict[str, str]) -> dict[str, object]:
        ctx = Context(folder, state, None, slots, secrets=secrets)
        found = desired_instances(loaded, {}, ctx)
        inst = found["auth-jakarta-1"]
        assert found["accounts-jakarta-1"].secrets == {}
        assert "CREDENTIALS_DIRECTORY" not in found["accounts-jakarta-1"].env
        return {"env": inst.env, "files": inst.secrets, "hash": inst.template_hash()}

    now = auth(values)
    rotated = auth({**values, "signing-key": "s2"})
    env = now["env"]

    assert isinstance(env, dict)
    assert env["AUTH_SIGNING_KEY"] == "s1"
    assert env["CREDENTIALS_DIRECTORY"] == str(state / "run" / "credentials" / "auth")
    assert now["files"] == {
        "signing-key": str(state / "secrets" / "signing-key"),
        "tls-key": str(state / "secrets" / "tls-key"),
    }
    assert now["hash"] != rotated["hash"]
    assert "s1" not in str(env.get("ALWAYSON_SECRETS"))


def test_the_runtime_delivers_private_copies_and_removes_stale_ones(tmp_path: Path) -> None:
    kept = tmp_path / "secrets"
    kept.mkdir()
    (kept / "signing-key").write_text("s1")
    folder = tmp_path / "run" / "credentials" / "auth"
    folder.mkdir(parents=True)
    (folder / "gone").write_text("old")

    deliver_secrets(folder, {"signing-key": str(kept / "signing-key")}, Identity())

    assert [p.name for p in folder.iterdir()] == ["signing-key"]
    assert (folder / "signing-key").read_text() == "s1"
    assert stat.S_IMODE((folder / "signing-key").stat().st_mode) == 0o400
    assert stat.S_IMODE(folder.stat().st_mode) == 0o500
    (kept / "signing-key").write_text("s2")
    deliver_secrets(folder, {"signing-key": str(kept / "signing-key")}, Identity())
    assert (folder / "signing-key").read_text() == "s2"  # a rotation arrives at the next start


async def test_apply_keeps_secrets_audits_no_value_and_refuses_a_missing_one(
    folder: Path,
) -> None:
    ctl = await memory_controller(folder)
    path = str(folder / "alwayson.yaml")

    with pytest.raises(PermanentError, match="PARTNER_TOKEN is not set"):
        await ctl.apply(SPEC, path, "alice")
    assert ctl.spec_or_none() is None

    result = await ctl.apply(SPEC, path, "alice", secrets={"partner-token": "t0ps3cret"})
    assert "+ secret partner-token: from $PARTNER_TOKEN of the operator" in map(str, result.changes)
    assert await ctl.plan(SPEC, path, {"partner-token": "t0ps3cret"}) == []
    audit = await ctl.store.list_audit()
    assert "t0ps3cret" not in repr(audit)
    kept = folder / ".alwayson" / "secrets" / "partner-token"
    assert kept.read_text() == "t0ps3cret" and stat.S_IMODE(kept.stat().st_mode) == 0o600
