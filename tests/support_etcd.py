"""A real three-member etcd cluster with mutual TLS for tests, on a private loopback subnet.

Members are Debian's ``etcd`` (installed by scripts/setup.sh), started in their own
sessions and stopped by the pids this module started, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.support import reserve_subnet, wait_for

from alwayson.store.members import Member, endpoints_from, member_argv
from alwayson.util.certs import TlsFiles, client_files, ensure_leaf

SITES = ("jakarta", "surabaya", "witness")


def etcd_binary() -> str:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found is None:
        raise RuntimeError("etcd is not installed: run `bash scripts/setup.sh` (apt etcd-server)")
    return found


@dataclass
class Cluster:
    root: Path
    members: list[Member]
    tls: dict[str, TlsFiles]
    client: TlsFiles
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def endpoints(self, first: str | None = None) -> list[str]:
        return endpoints_from(self.members, first)

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def start(self, name: str, state: str = "new") -> None:
        member = self.member(name)
        member.data_dir.parent.mkdir(parents=True, exist_ok=True)
        argv = member_argv(etcd_binary(), member, self.members, self.tls[name], "test", state)
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def healthy(self, name: str) -> bool:
        try:
            reply = httpx.get(f"{self.member(name).metrics_url}/health", timeout=0.5)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json().get("health") == "true"

    def wait_healthy(self, names: tuple[str, ...] = SITES, timeout: float = 30.0) -> None:
        wait_for("etcd members healthy", lambda: all(self.healthy(n) for n in names), timeout)

    def signal(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def make_cluster(root: Path) -> Cluster:
    octet = reserve_subnet()
    members = [
        Member(name, f"127.{octet}.0.{5 + i}", root / "etcd" / name) for i, name in enumerate(SITES)
    ]
    tls = {m.name: ensure_leaf(root, "test", m.name, [m.host]) for m in members}
    return Cluster(root, members, tls, client_files(root, "test"))


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    cluster = make_cluster(root)
    try:
        for name in SITES:
            cluster.start(name)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of this test's own (it may stop members)."""
    with running_cluster(tmp_path) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for a module's tests that leave every member running."""
    with running_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster
