"""An identity per service (issue 15, item 1), tested the way the probe attacked: as one
service's own uid, on the sample bank with its database.

The probe, on the old code (every service and PostgreSQL as ``nobody``): a workload read
``/proc/<postgres>/environ`` (the superuser's password), ``/proc/<auth>/environ``
(``AUTH_SIGNING_KEY``), ``run/instances/*.json`` (0644, the app password) and
``state.db-wal`` (0644, the spec's secrets), and SIGKILLed a sibling to take its address.
Each attempt below runs in a process with the attacking service's uid and gid, and each
must be refused.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.support import Platform, echo_service, three_service_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="identities need root to switch")

NOBODY = 65534
ATTACK = r"""
import json, os, sys
targets = json.loads(sys.argv[1])
out = {}
for name, path in targets["read"].items():
    try:
        with open(path, "rb") as f:
            f.read(1)
        out[name] = "read"
    except OSError as exc:
        out[name] = type(exc).__name__
for name, pid in targets["signal"].items():
    try:
        os.kill(pid, 0)
        out[name] = "signalled"
    except OSError as exc:
        out[name] = type(exc).__name__
own = os.environ["RUNTIME_DIRECTORY"]
with open(os.path.join(own, "probe"), "w") as f:
    f.write("mine")
out["own private dir"] = "written"
print(json.dumps(out))
"""


def _pids(platform: Platform, service: str) -> list[int]:
    return [int(i["pid"]) for i in platform.instances(service=service, desired=True)]


def _postmaster(platform: Platform, site: str) -> int:
    pidfile = platform.state_dir / "data" / "bank" / site / "pgdata" / "postmaster.pid"
    return int(pidfile.read_text().splitlines()[0])


def _as(uid: int, targets: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", ATTACK, json.dumps(targets)],
        user=uid,
        group=uid,
        extra_groups=[],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(json.loads(done.stdout))


def test_a_service_reaches_no_other_service_nor_the_database(bank: Platform) -> None:
    uids: dict[str, set[int]] = {}
    services = sorted({i["service"] for i in bank.instances(kind="workload", desired=True)})
    for service in services:
        uids[service] = {psutil.Process(p).uids().real for p in _pids(bank, service)}
    # One identity per service, shared by its instances, none root, none PostgreSQL's.
    assert all(len(u) == 1 for u in uids.values()), uids
    owners = {s: next(iter(u)) for s, u in uids.items()}
    assert len(set(owners.values())) == len(owners), owners
    assert not {0, NOBODY} & set(owners.values()), owners
    postmaster = _postmaster(bank, "jakarta")
    assert psutil.Process(postmaster).uids().real == NOBODY
    # The superuser's password is in a 0600 passfile of PostgreSQL's identity only: not in
    # the servers' environment, not in their configuration (the standby's primary_conninfo).
    passwords = json.loads((bank.state_dir / "data" / "secrets.json").read_text())["bank"]
    for site in ("jakarta", "surabaya"):
        server = psutil.Process(_postmaster(bank, site))
        assert passwords["superuser"] not in json.dumps(server.environ()), site
        conf = bank.state_dir / "data" / "bank" / site / "pgdata" / "alwayson.conf"
        assert passwords["superuser"] not in conf.read_text(), site
        passfile = bank.state_dir / "data" / "bank" / site / "pgpass"
        assert passfile.stat().st_uid == NOBODY and stat.S_IMODE(passfile.stat().st_mode) == 0o600

    accounts = _pids(bank, "accounts")[0]
    attacker = owners["onboarding"]
    env = psutil.Process(_pids(bank, "onboarding")[0]).environ()
    data_dir = bank.state_dir / "data" / "bank" / "jakarta" / "pgdata"
    targets = {
        "read": {
            "another service's environ": f"/proc/{accounts}/environ",
            "postgres's environ": f"/proc/{postmaster}/environ",
            "postgres's data": str(data_dir / "PG_VERSION"),
            "an instance record": str(bank.state_dir / "run/instances/accounts-jakarta-1.json"),
            "the API token": str(bank.state_dir / "token"),
            "the gateways' secret": str(bank.state_dir / "run" / "gateway.token"),
            "the agents' secret": str(bank.state_dir / "run" / "agents.token"),
            "another's private dir": str(bank.state_dir / "run" / "private" / "accounts" / "probe"),
        },
        "signal": {"another service's process": accounts, "postgres": postmaster},
    }
    (bank.state_dir / "run" / "private" / "accounts" / "probe").write_text("theirs")

    seen = _as(attacker, targets, {"RUNTIME_DIRECTORY": env["RUNTIME_DIRECTORY"]})

    refused = {k: v for k, v in seen.items() if k != "own private dir"}
    assert set(refused.values()) == {"PermissionError"}, seen
    assert seen["own private dir"] == "written"
    private = Path(env["RUNTIME_DIRECTORY"])
    assert private == bank.state_dir / "run" / "private" / "onboarding"
    assert private.stat().st_uid == attacker and stat.S_IMODE(private.stat().st_mode) == 0o700
    assert env["HOME"] == str(private)


def test_secrets_arrive_as_files_only_their_service_reads_and_rotate_with_apply(
    make_platform: Callable[..., Platform], echo_folder: Path
) -> None:
    data = three_service_spec()
    data["services"] = [
        echo_service("accounts", 8000, replicas=1, secrets=[{"name": "ledger-key"}]),
        echo_service("cards", 8001, replicas=1),
    ]
    data["secrets"] = [{"name": "ledger-key", "env": "LEDGER_KEY"}]
    platform = make_platform(data, folder=echo_folder)
    platform.env["LEDGER_KEY"] = "first-value"
    platform.cli("up", "--timeout", "60")

    accounts = psutil.Process(_pids(platform, "accounts")[0])
    cards = psutil.Process(_pids(platform, "cards")[0])
    folder = Path(accounts.environ()["CREDENTIALS_DIRECTORY"])
    kept = folder / "ledger-key"
    assert kept.read_text() == "first-value"
    owner = accounts.uids().real
    assert (kept.stat().st_uid, stat.S_IMODE(kept.stat().st_mode)) == (owner, 0o400)
    assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (owner, 0o500)
    assert "first-value" not in json.dumps(accounts.environ())  # a file, not env, unless asked
    seen = _as(
        cards.uids().real,
        {"read": {"another service's secret": str(kept)}, "signal": {}},
        {"RUNTIME_DIRECTORY": cards.environ()["RUNTIME_DIRECTORY"]},
    )
    assert seen["another service's secret"] == "PermissionError"

    platform.env["LEDGER_KEY"] = "second-value"
    shown = platform.cli("plan")
    planned = shown.stdout + shown.stderr
    assert "secret ledger-key: (secret changed)" in planned and "second-value" not in planned
    platform.cli("apply", "--timeout", "60")
    after = _pids(platform, "accounts")
    assert after and after[0] != accounts.pid  # the instance rolled onto the new value
    assert kept.read_text() == "second-value"
    audit = platform.cli("audit", "--json").stdout
    assert "first-value" not in audit and "second-value" not in audit
