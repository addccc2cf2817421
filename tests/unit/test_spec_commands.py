"""``resolve_command``: a service's ``run`` line becomes an argv that exists here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from alwayson.spec.commands import CommandNotFound, resolve_command


@pytest.mark.parametrize("python", ["python", "python3", f"python3.{sys.version_info.minor}"])
def test_leading_python_is_this_interpreter(python: str, tmp_path: Path) -> None:
    argv = resolve_command(f"{python} -m bank.accounts --port 8000", tmp_path)

    assert argv == [sys.executable, "-m", "bank.accounts", "--port", "8000"]


def test_words_are_split_like_a_shell(tmp_path: Path) -> None:
    argv = resolve_command("python -c 'print(1)' \"two words\"", tmp_path)

    assert argv == [sys.executable, "-c", "print(1)", "two words"]


def test_program_on_path_is_found(tmp_path: Path) -> None:
    argv = resolve_command("sh -c 'exit 0'", tmp_path)

    assert Path(argv[0]).name == "sh"
    assert Path(argv[0]).is_absolute()
    assert argv[1:] == ["-c", "exit 0"]


def test_programs_beside_this_python_come_first(tmp_path: Path) -> None:
    # pytest is installed beside the interpreter running these tests.
    beside = Path(sys.executable).parent / "pytest"
    assert beside.exists(), "the test environment (.venv) installs pytest beside its python"

    assert resolve_command("pytest -q", tmp_path) == [str(beside), "-q"]


def test_relative_program_is_taken_from_the_spec_folder(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "serve.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)

    assert resolve_command("./bin/serve.sh --fast", tmp_path) == [str(script.resolve()), "--fast"]


def test_relative_program_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(CommandNotFound) as caught:
        resolve_command("./missing.sh", tmp_path)

    assert str(caught.value) == (
        f"'./missing.sh' does not exist (looked for {(tmp_path / 'missing.sh').resolve()})"
    )


def test_relative_program_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "serve.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)

    with pytest.raises(CommandNotFound) as caught:
        resolve_command("./serve.sh", tmp_path)

    assert str(caught.value) == f"{script.resolve()} is not executable (chmod +x it)"


def test_unknown_program(tmp_path: Path) -> None:
    with pytest.raises(CommandNotFound) as caught:
        resolve_command("nosuchcommand-xyz --flag", tmp_path)

    assert str(caught.value) == "'nosuchcommand-xyz' was not found on PATH"


def test_empty_command(tmp_path: Path) -> None:
    with pytest.raises(CommandNotFound) as caught:
        resolve_command("   ", tmp_path)

    assert str(caught.value) == "the command is empty"


def test_unbalanced_quote(tmp_path: Path) -> None:
    with pytest.raises(CommandNotFound) as caught:
        resolve_command("python -c 'print(1)", tmp_path)

    assert str(caught.value).startswith('cannot split "python -c \'print(1)" into words:')


def test_command_not_found_is_a_value_error() -> None:
    # The spec models rely on this to report it like any other invalid value.
    assert issubclass(CommandNotFound, ValueError)
