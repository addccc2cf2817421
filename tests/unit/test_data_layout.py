"""Where the data layer's parts live (``layout``) and the PostgreSQL configuration it
writes (``settings``), derived from a spec with two workload sites and a witness."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from alwayson.data import archives
from alwayson.data.engines import Identity
from alwayson.data.layout import (
    AgentConfig,
    DatabaseConfig,
    LinkConfig,
    agent_config,
    database_url,
    secrets_of,
)
from alwayson.data.links import Relay, Target
from alwayson.data.settings import HBA, INCLUDE_LINE, postgresql_conf, quote
from alwayson.spec.loading import load_spec_text
from alwayson.spec.models import PlatformSpec
from alwayson.util.replication import slot_name
from alwayson.util.sitelinks import Partitions, write_partitions

PASSWORDS = {
    "bank": {"superuser": "su-bank", "app": "app-bank"},
    "audit": {"superuser": "su-audit", "app": "app-audit"},
}


def spec_text(west: str = "west", east: str = "east", databases: str | None = None) -> str:
    databases = (
        databases
        if databases is not None
        else f"""\
  - name: bank
    primary_site: {east}
    services: [ledger]
  - name: audit
    primary_site: {west}
    replication: asynchronous
    lease: {{ttl: 9s, margin: 3s}}
    settings:
      work_mem: 8MB
      jit: false
      track_io_timing: true
      max_connections: 50
      random_page_cost: 1.5
      application_name: "o'brien"
"""
    )
    return f"""\
platform: bank
sites:
  - name: {west}
  - name: {east}
  - name: witness
    witness: true
services:
  - name: ledger
    version: "1"
    run: python -m bank.ledger
    port: 8001
databases:
{databases}"""


def load(text: str) -> PlatformSpec:
    return load_spec_text(text, Path("/nowhere/alwayson.yaml"), check_commands=False).spec


@pytest.fixture
def spec() -> PlatformSpec:
    return load(spec_text())


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def config(spec: PlatformSpec, site: str, state_dir: Path) -> AgentConfig:
    return agent_config(spec, site, state_dir, None, PASSWORDS)


def conf_lines(text: str) -> dict[str, str]:
    """``key = value`` lines as a dict; a key written twice is a mistake."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    pairs = [line.split(" = ", 1) for line in lines]
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"a setting appears twice: {keys}"
    return dict((k, v) for k, v in pairs)


# ---------------------------------------------------------------- agent_config


def test_the_agent_and_its_links_in_the_first_site(spec: PlatformSpec, state_dir: Path) -> None:
    cfg = config(spec, "west", state_dir)

    assert (cfg.site, cfg.witness, cfg.user) == ("west", "witness", None)
    assert cfg.admin == "127.1.0.9:7400"
    # etcd: its own site's member directly, the others' through west's link slot 98
    assert cfg.etcd.endpoints == ["127.1.0.3:20198", "127.1.0.3:20298", "127.1.0.3:20398"]
    assert cfg.etcd.root == f"/alwayson/{spec.platform}"
    assert cfg.etcd.ca == str(state_dir / "pki" / "ca.pem")
    assert cfg.etcd.cert == str(state_dir / "pki" / "client.pem")
    assert cfg.links == [
        LinkConfig(peer="west", listen="127.1.0.3:20198", target="127.1.0.5:2379"),
        LinkConfig(peer="east", listen="127.1.0.3:20298", target="127.2.0.5:2379"),
        LinkConfig(peer="witness", listen="127.1.0.3:20398", target="127.3.0.5:2379"),
        LinkConfig(peer="east", listen="127.1.0.3:20297", target="127.2.0.9:7400"),
        LinkConfig(peer="east", listen="127.1.0.3:20200", target="127.2.0.10:5432"),
        LinkConfig(peer="east", listen="127.1.0.3:20201", target="127.2.0.14:5432"),
    ]
    # failsafe questions go to the other workload site's agent through slot 97
    assert cfg.peer_agents == {"east": "127.1.0.3:20297"}
    assert cfg.state_dir == str(state_dir)
    assert cfg.token_file == str(state_dir / "run" / "agents.token")  # not the API's
    assert cfg.partitions_file == str(state_dir / "data" / "partitions.json")


def test_the_agent_and_its_links_in_the_second_site(spec: PlatformSpec, state_dir: Path) -> None:
    cfg = agent_config(spec, "east", state_dir, "nobody", PASSWORDS)

    assert cfg.admin == "127.2.0.9:7400"
    assert cfg.etcd.endpoints == ["127.2.0.3:20298", "127.2.0.3:20198", "127.2.0.3:20398"]
    assert cfg.user == "nobody"
    assert cfg.links == [
        LinkConfig(peer="west", listen="127.2.0.3:20198", target="127.1.0.5:2379"),
        LinkConfig(peer="east", listen="127.2.0.3:20298", target="127.2.0.5:2379"),
        LinkConfig(peer="witness", listen="127.2.0.3:20398", target="127.3.0.5:2379"),
        LinkConfig(peer="west", listen="127.2.0.3:20197", target="127.1.0.9:7400"),
        LinkConfig(peer="west", listen="127.2.0.3:20100", target="127.1.0.10:5432"),
        LinkConfig(peer="west", listen="127.2.0.3:20101", target="127.1.0.14:5432"),
    ]
    assert cfg.peer_agents == {"west": "127.2.0.3:20197"}


def test_each_database_as_one_site_runs_it(spec: PlatformSpec, state_dir: Path) -> None:
    bank, audit = config(spec, "west", state_dir).databases
    root = state_dir / "data"

    assert bank == DatabaseConfig(
        name="bank",
        index=0,
        site="west",
        primary_site="east",
        sites=["east", "west"],
        replication="synchronous",
        on_standby_loss="continue",
        standby_timeout=5.0,
        ttl=6.0,
        margin=2.0,
        switchover_max_lag=16 * 1024 * 1024,
        bin_dir=None,
        settings={},
        listen="127.1.0.10:5432",
        endpoint="127.1.0.11:5432",
        peers={"east": "127.1.0.3:20200"},
        data_dir=str(root / "bank" / "west" / "pgdata"),
        repo_dir=str(root / "bank" / "west" / "repo"),
        peer_repos={"east": str(root / "bank" / "east" / "repo")},
        backup_schedule="0 2 * * *",
        retention_count=7,
        retention_age=7 * 86400.0,
        verify_backups=True,
        keep_free=256 * 1024 * 1024,
        superuser_password="su-bank",
        app_password="app-bank",
    )
    assert bank.standby_sites == ["east"]
    assert (audit.index, audit.primary_site, audit.sites) == (1, "west", ["west", "east"])
    assert (audit.replication, audit.ttl, audit.margin) == ("asynchronous", 9.0, 3.0)
    assert (audit.listen, audit.endpoint) == ("127.1.0.14:5432", "127.1.0.15:5432")
    assert audit.peers == {"east": "127.1.0.3:20201"}
    assert audit.data_dir == str(root / "audit" / "west" / "pgdata")
    assert (audit.superuser_password, audit.app_password) == ("su-audit", "app-audit")


def test_peers_are_reached_through_this_sites_own_links(
    spec: PlatformSpec, state_dir: Path
) -> None:
    for site in ("west", "east"):
        cfg = config(spec, site, state_dir)
        listens = {link.listen: link for link in cfg.links}
        for db in cfg.databases:
            for peer, address in db.peers.items():
                link = listens[address]
                assert link.peer == peer
                other = config(spec, peer, state_dir).databases[db.index]
                assert link.target == other.listen
        for peer, address in cfg.peer_agents.items():
            assert listens[address].peer == peer
            assert listens[address].target == config(spec, peer, state_dir).admin


def test_no_two_parts_share_an_address(spec: PlatformSpec, state_dir: Path) -> None:
    addresses: list[str] = []
    for site, prefix in (("west", "127.1."), ("east", "127.2.")):
        cfg = config(spec, site, state_dir)
        mine = [cfg.admin] + [link.listen for link in cfg.links]
        mine += [a for db in cfg.databases for a in (db.listen, db.endpoint)]
        assert all(a.startswith(prefix) for a in mine), mine
        addresses += mine
    addresses.append(config(spec, "west", state_dir).links[0].target)  # the keeper

    assert len(addresses) == len(set(addresses))


def test_database_url_points_at_the_sites_own_endpoint(spec: PlatformSpec) -> None:
    bank, audit = spec.databases

    assert database_url(spec, bank, "east", "s3cret") == (
        "postgresql://bank:s3cret@127.2.0.11:5432/bank"
    )
    assert database_url(spec, audit, "west", "pw") == (
        "postgresql://audit:pw@127.1.0.15:5432/audit"
    )


# ---------------------------------------------------------------- secrets


def test_secrets_are_made_once_private_and_kept(spec: PlatformSpec, state_dir: Path) -> None:
    old_umask = os.umask(0)  # the mode must come from the code, not from the umask
    try:
        first = secrets_of(state_dir, spec)
    finally:
        os.umask(old_umask)
    path = state_dir / "data" / "secrets.json"
    written = path.stat()

    again = secrets_of(state_dir, spec)

    assert stat.S_IMODE(written.st_mode) == 0o600
    assert set(first) == {"bank", "audit"}
    values = [pw for db in first.values() for pw in (db["superuser"], db["app"])]
    assert len(set(values)) == 4
    assert all(len(pw) >= 20 for pw in values)
    assert again == first
    assert json.loads(path.read_text()) == first
    assert path.stat().st_mtime_ns == written.st_mtime_ns  # not rewritten
    assert not (state_dir / "data" / "secrets.tmp").exists()


def test_a_new_database_gets_passwords_and_the_old_keep_theirs(
    spec: PlatformSpec, state_dir: Path
) -> None:
    first = secrets_of(state_dir, spec)
    grown = load(
        spec_text(
            databases=(
                "  - name: bank\n    primary_site: east\n"
                "  - name: audit\n    primary_site: west\n"
                "  - name: crm\n    primary_site: west\n"
            )
        )
    )

    after = secrets_of(state_dir, grown)

    assert after["bank"] == first["bank"]
    assert after["audit"] == first["audit"]
    assert set(after["crm"]) == {"superuser", "app"}
    assert after["crm"]["superuser"] not in (first["bank"]["superuser"], after["crm"]["app"])


# ---------------------------------------------------------------- postgresql_conf


def test_a_synchronous_primary(spec: PlatformSpec, state_dir: Path) -> None:
    bank = config(spec, "west", state_dir).databases[0]

    text = postgresql_conf(bank, bank.listen, ["east"])
    lines = conf_lines(text)

    assert text.startswith("# written by alwayson")
    assert text.endswith("\n")
    assert lines["listen_addresses"] == "'127.1.0.10'"
    assert lines["port"] == "5432"
    assert lines["cluster_name"] == "'bank@west'"
    assert lines["synchronous_standby_names"] == "'FIRST 1 (east)'"
    assert lines["synchronous_commit"] == "on"
    assert lines["archive_mode"] == "always"
    assert bank.repo_dir + "/wal/%f" in lines["archive_command"]
    assert lines["max_connections"] == "200"
    for absent in ("primary_conninfo", "primary_slot_name", "restore_command"):
        assert absent not in lines


def test_no_synchronous_names_is_an_empty_list(spec: PlatformSpec, state_dir: Path) -> None:
    bank = config(spec, "east", state_dir).databases[0]

    lines = conf_lines(postgresql_conf(bank, bank.listen, []))

    assert lines["synchronous_standby_names"] == "''"
    assert lines["listen_addresses"] == "'127.2.0.10'"


def test_site_names_with_dashes_become_slot_names_with_underscores(state_dir: Path) -> None:
    dashed = load(spec_text(west="west-coast", east="east-side"))
    standby = config(dashed, "west-coast", state_dir).databases[0]  # bank: east-side primary

    lines = conf_lines(
        postgresql_conf(standby, standby.listen, ["east-side"], follow=standby.peers["east-side"])
    )

    assert slot_name("east-side") == "east_side"
    assert lines["synchronous_standby_names"] == "'FIRST 1 (east_side)'"
    assert lines["cluster_name"] == "'bank@west-coast'"
    assert lines["primary_slot_name"] == "'west_coast'"
    passfile = state_dir / "data" / "bank" / "west-coast" / "pgpass"
    assert lines["primary_conninfo"] == (
        f"'host=127.1.0.3 port=20200 user=alwayson passfile={passfile} "
        "application_name=west_coast connect_timeout=2'"
    )  # the password itself is in no configuration file
    assert "su-bank" not in "".join(lines.values())


def test_a_restore_reads_the_repository_and_stops_at_the_target(
    spec: PlatformSpec, state_dir: Path
) -> None:
    bank = config(spec, "west", state_dir).databases[0]
    repo = state_dir / "data" / "bank" / "east" / "repo"

    lines = conf_lines(
        postgresql_conf(
            bank,
            "127.1.0.30:5433",
            [],
            restore_from=repo,
            recovery_target={
                "recovery_target_time": "2024-05-01 10:00:00+00",
                "recovery_target_action": "promote",
                "recovery_target_inclusive": "false",
            },
            archive=False,
        )
    )

    assert (lines["listen_addresses"], lines["port"]) == ("'127.1.0.30'", "5433")
    assert lines["restore_command"] == f"'cp \"{repo}/wal/%f\" %p'"
    assert lines["primary_conninfo"] == "''"
    assert "primary_slot_name" not in lines
    assert lines["recovery_target_time"] == "'2024-05-01 10:00:00+00'"
    assert lines["recovery_target_action"] == "'promote'"
    assert lines["recovery_target_inclusive"] == "false"
    assert lines["archive_mode"] == "off"


def test_a_restore_never_follows_a_primary_even_when_asked(
    spec: PlatformSpec, state_dir: Path
) -> None:
    bank = config(spec, "west", state_dir).databases[0]

    lines = conf_lines(
        postgresql_conf(bank, bank.listen, [], follow="127.1.0.3:20200", restore_from=Path("/r"))
    )

    assert lines["primary_conninfo"] == "''"


def test_extra_settings_are_rendered_by_type(spec: PlatformSpec, state_dir: Path) -> None:
    audit = config(spec, "west", state_dir).databases[1]

    lines = conf_lines(postgresql_conf(audit, audit.listen, []))

    assert lines["work_mem"] == "'8MB'"
    assert lines["jit"] == "off"
    assert lines["track_io_timing"] == "on"
    assert lines["max_connections"] == "50"  # replaces the default, not a second line
    assert lines["random_page_cost"] == "1.5"
    assert lines["application_name"] == "'o''brien'"


def test_quotes_are_doubled() -> None:
    assert quote("it's") == "'it''s'"
    assert quote("''") == "''''''"
    assert quote("") == "''"


def test_the_include_and_hba_lines() -> None:
    assert INCLUDE_LINE == "include_if_exists = 'alwayson.conf'\n"
    assert "host replication alwayson 127.0.0.0/8 scram-sha-256" in HBA.splitlines()
    assert "host all all 127.0.0.0/8 scram-sha-256" in HBA.splitlines()


# ---------------------------------------------------------------- backup repositories

NOBODY = Identity(None, None, None, "/tmp")


def repo_config(spec: PlatformSpec, state_dir: Path, site: str, **retention: Any) -> DatabaseConfig:
    """The bank's configuration in ``site`` with its repository prepared (empty)."""
    bank = config(spec, site, state_dir).databases[0]
    for sub in ("base", "wal"):
        (Path(bank.repo_dir) / sub).mkdir(parents=True, exist_ok=True)
    return bank.model_copy(update=retention)


def put_backup(cfg: DatabaseConfig, ident: str, finished_at: float, start_wal: str) -> None:
    folder = Path(cfg.repo_dir) / "base" / ident
    folder.mkdir(parents=True)
    (folder / "base.tar").write_text(f"data of {ident}")
    record = {"id": ident, "site": cfg.site, "finished_at": finished_at, "start_wal": start_wal}
    (folder / "alwayson-backup.json").write_text(json.dumps(record))


def put_wal(cfg: DatabaseConfig, *names: str) -> None:
    wal = Path(cfg.repo_dir) / "wal"
    wal.mkdir(parents=True, exist_ok=True)
    for name in names:
        (wal / name).write_text(name)


def listing(cfg: DatabaseConfig, sub: str) -> list[str]:
    folder = Path(cfg.repo_dir) / sub
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def segment(n: int, timeline: int = 1) -> str:
    return f"{timeline:08X}{0:08X}{n:08X}"


def test_retention_keeps_the_newest_by_count_and_age_and_always_the_newest(
    spec: PlatformSpec, state_dir: Path
) -> None:
    cfg = repo_config(spec, state_dir, "west", retention_count=2, retention_age=100.0)
    found = [{"id": f"b{i}", "finished_at": at} for i, at in enumerate([10.0, 500.0, 520.0])]

    assert [b["id"] for b in archives.kept(cfg, found, now=550.0)] == ["b1", "b2"]
    assert [b["id"] for b in archives.kept(cfg, found, now=610.0)] == ["b2"]
    assert [b["id"] for b in archives.kept(cfg, found, now=9999.0)] == ["b2"]
    assert archives.kept(cfg, [], now=1.0) == []


def test_retain_removes_old_backups_and_the_wal_only_they_needed(
    spec: PlatformSpec, state_dir: Path
) -> None:
    cfg = repo_config(spec, state_dir, "west", retention_count=2, retention_age=1e9)
    put_backup(cfg, "b1", 1.0, segment(2))
    put_backup(cfg, "b2", 2.0, segment(5))
    put_backup(cfg, "b3", 3.0, segment(8))
    put_wal(cfg, segment(2), segment(4), segment(5), segment(9), "00000002.history")

    removed = archives.retain(cfg, now=4.0)

    assert [b["id"] for b in removed] == ["b1"]
    assert listing(cfg, "base") == ["b2", "b3"]
    assert listing(cfg, "wal") == sorted([segment(5), segment(9), "00000002.history"])


def test_mirroring_copies_what_the_other_site_lacks_only_while_the_link_is_up(
    spec: PlatformSpec, state_dir: Path
) -> None:
    west = repo_config(spec, state_dir, "west")
    east = repo_config(spec, state_dir, "east")
    put_backup(west, "b1", time.time(), segment(3))
    put_wal(west, segment(3), segment(4))
    cuts = state_dir / "partitions.json"
    write_partitions(cuts, [("west", "east")])
    partitions = Partitions(cuts)
    partitions.refresh()

    assert archives.mirror(west, partitions, NOBODY, time.time()) == 0
    assert listing(east, "base") == [] and listing(east, "wal") == []

    write_partitions(cuts, [])
    partitions.refresh()
    assert archives.mirror(west, partitions, NOBODY, time.time()) == 3
    assert listing(east, "base") == ["b1"]
    assert listing(east, "wal") == [segment(3), segment(4)]
    assert archives.mirror(west, partitions, NOBODY, time.time()) == 0
    # A copy that lost the race to another copier leaves nothing behind.
    taken = Path(east.repo_dir) / "wal" / segment(9)
    taken.write_text("already here")
    assert not archives.copy_in(lambda tmp: tmp.write_text("late"), taken, NOBODY)
    assert taken.read_text() == "already here"
    assert listing(east, "wal") == [segment(3), segment(4), segment(9)]


def test_mirroring_never_brings_back_a_backup_the_other_site_dropped(
    spec: PlatformSpec, state_dir: Path
) -> None:
    west = repo_config(spec, state_dir, "west", retention_count=2)
    east = repo_config(spec, state_dir, "east", retention_count=2)
    now = time.time()
    for cfg in (west, east):
        put_backup(cfg, "b2", now - 20, segment(5))
        put_backup(cfg, "b3", now - 10, segment(8))
    put_backup(west, "b1", now - 30, segment(2))  # east's retention already removed it
    put_wal(west, segment(2), segment(8))
    partitions = Partitions(state_dir / "partitions.json")

    archives.mirror(west, partitions, NOBODY, time.time())

    assert listing(east, "base") == ["b2", "b3"]
    assert listing(east, "wal") == [segment(8)]


def test_a_backups_record_follows_from_the_site_that_made_it(
    spec: PlatformSpec, state_dir: Path
) -> None:
    west = repo_config(spec, state_dir, "west")
    east = repo_config(spec, state_dir, "east")
    put_backup(west, "b1", time.time(), segment(3))
    partitions = Partitions(state_dir / "partitions.json")
    archives.mirror(west, partitions, NOBODY, time.time())
    record_path = Path(west.repo_dir) / "base" / "b1" / "alwayson-backup.json"
    verified = {**json.loads(record_path.read_text()), "verified": True}
    record_path.write_text(json.dumps(verified))

    archives.mirror(west, partitions, NOBODY, time.time())
    # east did not make it: it never writes back
    archives.mirror(east, partitions, NOBODY, time.time())

    mirrored = Path(east.repo_dir) / "base" / "b1" / "alwayson-backup.json"
    assert json.loads(mirrored.read_text())["verified"] is True
    assert json.loads(record_path.read_text())["verified"] is True


# ---------------------------------------------------------------- site links


async def test_a_cut_link_closes_a_new_connection_at_once(state_dir: Path) -> None:
    """A relay across a cut refuses before asyncio has even handed it the transport; the
    client must still see the connection closed (a walreceiver otherwise waits forever
    on it, long after the link is back)."""
    cuts = state_dir / "partitions.json"
    write_partitions(cuts, [("west", "east")])
    partitions = Partitions(cuts)
    partitions.refresh()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = Relay(
        "link→east",
        "west",
        f"127.0.0.1:{port}",
        lambda: Target("127.0.0.1:9", "east"),
        partitions,
    )
    await relay.start()
    try:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(), 2.0) == b""
            writer.close()
        assert relay.refused == 5 and not relay.pipes
    finally:
        await relay.close()


def test_an_agent_loses_its_own_etcd_member_only_when_its_site_is_cut_from_every_other(
    tmp_path: Path,
) -> None:
    """On the lab the members' own traffic crosses no link: a site cut from all others
    must see its member as raft would (a minority that serves nothing)."""
    from alwayson.data.agent import in_majority
    from alwayson.data.links import Target
    from alwayson.util.sitelinks import Partitions, write_partitions

    path = tmp_path / "partitions.json"
    partitions = Partitions(path)
    own = Target("127.1.0.5:2379", "west")
    choose = in_majority(lambda: own, "west", {"east", "witness"}, partitions)
    assert choose() == own
    write_partitions(path, [("west", "east")])
    partitions.refresh()
    assert choose() == own  # still with the witness: a majority
    write_partitions(path, [("west", "east"), ("west", "witness")])
    partitions.refresh()
    assert choose() is None


def test_the_superuser_passfile_is_private_and_escaped(tmp_path: Path) -> None:
    from alwayson.data.engines import Identity, write_passfile
    from alwayson.data.settings import conninfo_value

    path = tmp_path / "pgpass"
    write_passfile(path, "a:b\\c", Identity(None, None, None, "/tmp"))

    assert path.read_text() == "*:*:*:*:a\\:b\\\\c\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert conninfo_value("/state dir/pgpass") == "'/state dir/pgpass'"
    assert conninfo_value("/plain/pgpass") == "/plain/pgpass"
