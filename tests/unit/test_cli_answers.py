"""The CLI's own answers: a version, and one exit code per kind of failure (issue 15:
`validate` exited 1 where `apply` exits 2 on the same bad spec)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from typer.testing import CliRunner

from alwayson.cli.main import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])

    assert result.exit_code == 0
    assert result.stdout.strip() == f"alwayson {version('alwayson')}"


def test_an_invalid_spec_exits_2_from_validate_as_from_every_command(tmp_path: Path) -> None:
    spec = tmp_path / "alwayson.yaml"
    spec.write_text("platform: bank\nsites: []\n")

    validated = runner.invoke(app, ["validate", "-f", str(spec)])
    applied = runner.invoke(app, ["apply", "-f", str(spec)])
    planned = runner.invoke(app, ["plan", "-f", str(spec)])

    assert (validated.exit_code, applied.exit_code, planned.exit_code) == (2, 2, 2)
    assert "sites" in validated.stderr


def test_an_alias_bomb_is_an_invalid_spec(tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    spec = tmp_path / "alwayson.yaml"
    spec.write_text("\n".join(levels) + "\n")

    result = runner.invoke(app, ["validate", "--json", "-f", str(spec)])

    assert result.exit_code == 2
    assert '"valid": false' in result.stdout and "more than 20,000 values" in result.stdout


def test_up_says_what_isolation_is_lost() -> None:
    from alwayson.cli.isolation import isolation_lost

    assert isolation_lost(None, 0, "root") is None
    not_root = isolation_lost(None, 1000, "alice")
    assert not_root is not None and not_root.startswith("alwayson runs as alice, not root")
    assert "Run as root for an identity per service" in not_root
    named = isolation_lost("appuser", 0, "root")
    assert named is not None and named.startswith("runtime.user is appuser: every service")
