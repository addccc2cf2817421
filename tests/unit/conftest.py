"""Shared fixtures for the unit tests: a good spec, a loader writing into ``tmp_path`` and
the desired state computed from a loaded spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from alwayson.control.desired import Context, allocate_slots, desired_instances
from alwayson.runtime.base import InstanceSpec
from alwayson.spec.loading import LoadedSpec, load_spec_file
from alwayson.spec.planning import Overrides

GOOD_SPEC = """\
platform: digital-bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1.0.0"
    run: python -m bank.accounts
    port: 8000
    replicas: 2
    health: {http: /healthz, interval: 1s, timeout: 500ms}
    routes: [{path: /accounts}]
"""

LoadSpec = Callable[[str], LoadedSpec]
Desire = Callable[..., dict[str, InstanceSpec]]


@pytest.fixture
def good_spec() -> str:
    """The spec of the brief: two workload sites, a witness and one service."""
    return GOOD_SPEC


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    return tmp_path / "alwayson.yaml"


@pytest.fixture
def load_spec(spec_file: Path) -> LoadSpec:
    """Write a spec into its own folder and load it the way the CLI does."""

    def load(text: str) -> LoadedSpec:
        spec_file.write_text(text, encoding="utf-8")
        return load_spec_file(spec_file)

    return load


@pytest.fixture
def desire(tmp_path: Path) -> Desire:
    """``desired_instances`` of a loaded spec, with slots allocated from scratch."""

    def compute(
        loaded: LoadedSpec,
        overrides: Overrides | None = None,
        slots: dict[str, int] | None = None,
    ) -> dict[str, InstanceSpec]:
        ctx = Context(
            spec_folder=loaded.folder,
            state_dir=tmp_path / ".alwayson",
            user=None,
            service_slots=allocate_slots(loaded.spec, slots or {}),
        )
        return desired_instances(loaded.spec, overrides or {}, ctx)

    return compute
