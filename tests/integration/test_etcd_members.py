"""etcd, one member per site, run by the platform: real members of a platform with a
database, brought up by `alwayson up`, reached over mutual TLS with the platform's client
certificate, restarted when killed, left alone (unready) when they lose their majority,
and re-adopted, not restarted, by a new controller.

The database agents are not what this checks (`up` may report them); only the members.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from tests.integration.dbcluster import db_spec
from tests.support import Platform, wait_for

from alwayson.data.layout import etcd_members
from alwayson.spec.loading import load_spec_file
from alwayson.store.etcd import Etcd
from alwayson.store.members import Member, endpoints_from
from alwayson.util.certs import client_files

SITES = ("jakarta", "surabaya", "witness")
MEMBERS = [f"etcd@{site}" for site in SITES]


def members_of(platform: Platform) -> list[Member]:
    return etcd_members(load_spec_file(platform.spec_path).spec, platform.state_dir)


def rows(platform: Platform) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in platform.instances(kind="etcd")}


def all_ready(platform: Platform) -> dict[str, dict[str, Any]] | None:
    found = rows(platform)
    if sorted(found) == MEMBERS and all(r["ready"] for r in found.values()):
        return found
    return None


async def _put_get(platform: Platform, endpoints: list[str], key: str, value: bytes) -> bytes:
    etcd = Etcd(endpoints, client_files(platform.state_dir, "dbtest"), timeout=3.0)
    try:
        if value:
            await etcd.put(key, value)
        found = await etcd.get(key)
        return found.value if found else b""
    finally:
        await etcd.close()


def put_get(platform: Platform, endpoints: list[str], key: str, value: bytes = b"") -> bytes:
    """Write ``value`` (unless empty) and read ``key`` back over TLS, through ``endpoints``."""
    return asyncio.run(_put_get(platform, endpoints, key, value))


async def _leaders(platform: Platform, members: list[Member]) -> set[int]:
    etcd = Etcd(endpoints_from(members), client_files(platform.state_dir, "dbtest"))
    try:
        found = [await etcd.member_status(m.endpoint) for m in members]
        return {int(s["leader"]) for s in found}
    finally:
        await etcd.close()


def same_process(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.05
    except psutil.Error:
        return False


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_members_run_over_tls_are_restarted_when_killed_and_readopted(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = make_platform(db_spec(), folder=tmp_path / "platform")
    # The agents may not be ready (they are not what this test is about): no check.
    platform.cli("up", "--timeout", "30", check=False, timeout=120)
    ready = wait_for("three etcd members ready", lambda: all_ready(platform), timeout=60)
    members = members_of(platform)
    state = platform.state_dir

    # One per site, on the site's own address, as the status shows them.
    for member, site in zip(members, SITES, strict=True):
        row = ready[f"etcd@{site}"]
        assert (row["site"], row["address"]) == (site, f"{member.host}:2381")
        assert row["log"] == str(state / "logs" / site / f"etcd@{site}.log")
        assert stat.S_IMODE(member.data_dir.stat().st_mode) == 0o700
        assert (member.data_dir / "member").is_dir()
    # One cluster: every member names the same leader.
    assert len(asyncio.run(_leaders(platform, members))) == 1
    # Mutual TLS with the platform's client certificate, through any member.
    assert put_get(platform, endpoints_from(members, "jakarta"), "/t/a", b"1") == b"1"
    assert put_get(platform, [members[2].endpoint], "/t/a") == b"1"

    # SIGKILL of one member: the controller starts it again and it has its data.
    killed = ready["etcd@surabaya"]["pid"]
    os.kill(killed, signal.SIGKILL)
    again = wait_for(
        "etcd@surabaya restarted and ready",
        lambda: (r := all_ready(platform)) and r["etcd@surabaya"]["pid"] != killed and r,
        timeout=60,
    )
    # `up` started it and the leader adopted it: not its parent, the leader cannot read its
    # exit status. Kept on etcd whoever leads (a restart count is a leader's own memory,
    # and losing raft's leader can hand the controllers' leadership on).
    # An event the controller could not write while etcd was short of a member is kept and
    # sent again (every 2 s): wait for it rather than read once.
    wait_for(
        "the crash of etcd@surabaya in events",
        lambda: any(
            e["subject"] == "etcd@surabaya"
            for e in json.loads(platform.cli("events", "--kind", "crashed", "--json").stdout)
        ),
        timeout=15,
    )
    assert put_get(platform, [members[1].endpoint], "/t/a") == b"1"
    assert put_get(platform, [members[1].endpoint], "/t/b", b"2") == b"2"

    # A member's data folder lost (held still, emptied, killed): the controller removes it
    # from the cluster, adds it back and starts it as `existing`; it copies the others'.
    lost = again["etcd@surabaya"]["pid"]
    os.kill(lost, signal.SIGSTOP)
    shutil.rmtree(members[1].data_dir)
    os.kill(lost, signal.SIGKILL)
    again = wait_for(
        "etcd@surabaya rejoined with the others' data",
        lambda: (r := all_ready(platform)) and r["etcd@surabaya"]["pid"] != lost and r,
        timeout=90,
    )
    assert (members[1].data_dir / "member").is_dir()
    assert put_get(platform, [members[1].endpoint], "/t/b") == b"2"
    wait_for(
        "the rejoin in events",
        lambda: (
            "lost its data folder"
            in platform.cli("events", "--kind", "etcd-member-rejoined", "--json").stdout
        ),
        timeout=15,
    )

    # Two members hang: the third has no majority. No controller can lead (they keep their
    # state on etcd), so none acts: the status says why, and the third member is left
    # running (restarting it would not bring the others back).
    witness = again["etcd@witness"]
    hung = {
        again[f"etcd@{site}"]["pid"]: psutil.Process(again[f"etcd@{site}"]["pid"]).create_time()
        for site in ("jakarta", "surabaya")
    }
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)
    try:

        def refused() -> str | None:
            answer = platform.cli("status", "--json", check=False, timeout=60)
            return answer.stderr if answer.returncode == 1 else None

        why = wait_for("no controller leads without etcd's majority", refused, timeout=90)
        assert "no controller leads now" in why and "etcd" in why, why
        held_until = time.monotonic() + 10.0
        while time.monotonic() < held_until:
            assert running(witness["pid"])  # nobody restarts it
            time.sleep(1.0)
    finally:
        for pid, started in hung.items():
            if same_process(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
    back = wait_for("a majority again", lambda: all_ready(platform), timeout=60)
    assert back["etcd@witness"]["pid"] == witness["pid"]
    assert put_get(platform, endpoints_from(members, "witness"), "/t/a") == b"1"

    # A new controller adopts the running members: same processes, none restarted.
    pids = {ident: row["pid"] for ident, row in back.items()}
    controller = platform.controller_pid()
    assert controller is not None
    os.kill(controller, signal.SIGKILL)
    wait_for("the controller gone", lambda: not running(controller), timeout=10)
    platform.cli("up", "--timeout", "30", check=False, timeout=120)
    adopted = wait_for("members adopted and ready", lambda: all_ready(platform), timeout=60)
    assert {ident: row["pid"] for ident, row in adopted.items()} == pids
    assert all(row["adopted"] for row in adopted.values())
    assert put_get(platform, endpoints_from(members), "/t/a") == b"1"

    # `down` stops them (after the agents); the next `up` starts them on the same data
    # (a member with data ignores --initial-cluster-state=new) and the same certificates.
    certificates = {p.name: p.read_bytes() for p in (state / "pki").iterdir()}
    platform.cli("down")
    assert not [p for p in pids.values() if running(p)]
    platform.cli("up", "--timeout", "30", check=False, timeout=120)
    wait_for("members up again", lambda: all_ready(platform), timeout=60)
    assert put_get(platform, endpoints_from(members, "surabaya"), "/t/b") == b"2"
    assert {p.name: p.read_bytes() for p in (state / "pki").iterdir()} == certificates


def test_an_up_whose_member_cannot_start_names_it_and_its_log(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = make_platform(db_spec(), folder=tmp_path / "platform")
    broken = members_of(platform)[0].data_dir
    broken.mkdir(parents=True, mode=0o700)
    (broken / "member").write_text("not etcd's data")  # etcd cannot open its WAL: it exits

    result = platform.cli("up", "--timeout", "30", check=False, timeout=120)

    print(result.stderr)
    assert result.returncode == 1
    log = platform.state_dir / "logs" / "jakarta" / "etcd@jakarta.log"
    lines = result.stderr.splitlines()
    named = next(i for i, line in enumerate(lines) if "etcd@jakarta (etcd in jakarta):" in line)
    assert lines[named + 1].strip() == f"log: {log}", result.stderr
    assert "alwayson: starting etcd@jakarta" in log.read_text()


def test_an_up_where_a_members_port_is_taken_is_refused_before_anything_starts(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = make_platform(db_spec(), folder=tmp_path / "platform")
    surabaya = members_of(platform)[1]
    with socket.socket() as squatter:
        squatter.bind((surabaya.host, 2380))
        squatter.listen()

        result = platform.cli("up", "--timeout", "30", check=False, timeout=120)

    assert result.returncode == 1
    assert f"{surabaya.host}:2380 (etcd member etcd@surabaya" in result.stderr, result.stderr
    assert "nothing was changed" in result.stderr
    assert not list(platform.state_dir.glob("run/instances/*.json"))
