"""The layers of ARCHITECTURE.md are enforced by import-linter (pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lint_imports() -> str:
    beside = Path(sys.executable).parent / "lint-imports"
    if beside.exists():
        return str(beside)
    found = shutil.which("lint-imports")
    assert found, "lint-imports is not installed; install the dev extras: pip install -e '.[dev]'"
    return found


def test_imports_respect_the_layers() -> None:
    result = subprocess.run(
        [lint_imports(), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, (
        f"lint-imports exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
