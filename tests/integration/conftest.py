"""Fixtures of the integration tests (the database cluster lives in dbcluster.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.integration.dbcluster import cluster
from tests.integration.test_bank_failover import SAMPLE, bank_spec
from tests.support import Platform

__all__ = ["bank", "cluster"]


@pytest.fixture
def bank(make_platform: Callable[..., Platform], tmp_path: Path) -> Iterator[Platform]:
    """The sample bank's ten core services, one replica per site, on a synchronous
    database, up and ready."""
    folder = tmp_path / "bank"
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns(".alwayson", "__pycache__"))
    platform = make_platform(bank_spec(folder), folder=folder)
    platform.cli("up", "--timeout", "90", timeout=180)
    yield platform  # make_platform's teardown: `alwayson down`, then every recorded pid
