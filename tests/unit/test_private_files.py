"""Files that hold secrets are 0600 (issue 15's probe: `run/instances/*.json` were 0644 and
held the app's database password; `state.db-wal` was 0644 and held the spec's secrets)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from alwayson.runtime.local import _write_json
from alwayson.store.sqlite import SQLiteStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_state_database_and_its_journal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SQLiteStore(path).open()
    try:
        await store.put("spec", {"env": {"AUTH_SIGNING_KEY": "s3cret"}})
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["state.db", "state.db-shm", "state.db-wal"]
        assert {p.name: mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(files, 0o600)
    finally:
        await store.close()


async def test_an_existing_state_database_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)

    store = await SQLiteStore(path).open()
    await store.close()

    assert mode(path) == 0o600


def test_an_instance_record_is_private_even_over_an_old_scratch_file(tmp_path: Path) -> None:
    target = tmp_path / "accounts-jakarta-1.json"
    scratch = tmp_path / "accounts-jakarta-1.json.tmp"
    scratch.write_text("{}")
    os.chmod(scratch, 0o644)

    _write_json(target, {"env": {"DATABASE_URL": "postgresql://app:pw@127.1.0.9/bank"}})

    assert mode(target) == 0o600


def test_every_private_write_narrows_a_stale_scratch_and_can_set_an_owner(
    tmp_path: Path,
) -> None:
    from alwayson.util.credentials import write_private

    target = tmp_path / "deep" / "pgpass"
    target.parent.mkdir()
    stale = target.with_name(".pgpass.tmp")
    stale.write_text("left by a crash")
    os.chmod(stale, 0o666)

    write_private(target, "*:*:*:*:pw\n", mode=0o400, owner=(os.getuid(), os.getgid()))

    assert target.read_text() == "*:*:*:*:pw\n" and mode(target) == 0o400
    assert not stale.exists()
    write_private(target, b"bytes too")
    assert target.read_bytes() == b"bytes too" and mode(target) == 0o600
