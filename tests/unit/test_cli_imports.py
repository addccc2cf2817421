"""The CLI imports only what a command uses (issue 13, part 8): `--help` and the commands
that only ask the controller load neither the control plane nor the spec's models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alwayson.spec.loading import load_spec_file, load_spec_text
from alwayson.spec.locating import PlatformAddress, locate_platform

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "digital-bank" / "alwayson.yaml"
HEAVY = (
    "alwayson.api.daemon",
    "alwayson.control",
    "alwayson.observe",
    "alwayson.loadgen",
    "alwayson.spec.models",
    "fastapi",
    "matplotlib",
    "numpy",
    "psutil",
)


def loaded_modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after ``code``, which ends by printing none."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_loads_no_heavy_module() -> None:
    modules = loaded_modules(
        "import contextlib, io, sys\n"
        "from alwayson.cli.main import app\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    app(['--help'])\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    app(['loadtest', '--help'])"
    )
    assert heavy_in(modules) == []
    assert "httpx" not in modules and "asyncio" not in modules


def test_finding_the_controller_builds_no_model() -> None:
    modules = loaded_modules(
        "from alwayson.cli.common import _client, _locate\n"
        f"_client(_locate(__import__('pathlib').Path({str(SAMPLE)!r})), 'status')"
    )
    assert heavy_in(modules) == []
    assert "alwayson.api.client" in modules


@pytest.mark.parametrize(
    "controller",
    [
        "",
        "controller: {api: '127.0.0.1:7171'}\n",
        "controller:\n  api: 7272\n  state_dir: run/state\n",
        "# the controller keeps its defaults\n",
    ],
)
def test_locating_agrees_with_the_full_loader(tmp_path: Path, controller: str) -> None:
    text = SAMPLE.read_text() + controller
    path = tmp_path / "alwayson.yaml"
    path.write_text(text)
    loaded = load_spec_text(text, path, check_commands=False)
    assert locate_platform(path) == PlatformAddress(loaded.spec.controller.api, loaded.state_dir)


def test_the_sample_bank_is_located_like_it_loads() -> None:
    loaded = load_spec_file(SAMPLE, check_commands=False)
    assert locate_platform(SAMPLE) == PlatformAddress(loaded.spec.controller.api, loaded.state_dir)


@pytest.mark.parametrize(
    "text",
    [
        "platform: x\ncontroller: [unclosed\n",
        "- a list\n",
        "platform: x\ncontroller: [1, 2]\n",
        "platform: x\ncontroller: null\n",
        "platform: x\ncontroller: {api: localhost:7070}\n",
        "",
    ],
)
def test_a_controller_it_cannot_read_plainly_is_left_to_the_full_loader(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "alwayson.yaml"
    path.write_text(text)
    assert locate_platform(path) is None
    assert locate_platform(tmp_path / "missing.yaml") is None
