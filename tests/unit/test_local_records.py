"""The local runtime's pid files read by the parts that outlive a runtime (the site
controller after ``down``, ``up``'s bring-up): one format, read in one module."""

from __future__ import annotations

import json
from pathlib import Path

from alwayson.runtime.local import forget_record, recorded_pids, run_dir


def _record(state: Path, ident: str, pid: int | str) -> Path:
    folder = run_dir(state)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ident}.json"
    path.write_text(json.dumps({"pid": pid, "start_time": 1.0}))
    return path


def test_recorded_pids_of_a_pattern_skip_unreadable_records(tmp_path: Path) -> None:
    _record(tmp_path, "controller@jakarta", 11)
    _record(tmp_path, "controller@witness", 12)
    _record(tmp_path, "controller@surabaya", "not a pid")
    _record(tmp_path, "accounts-jakarta-1", 13)
    assert sorted(recorded_pids(tmp_path, "controller@*")) == [11, 12]
    assert sorted(recorded_pids(tmp_path)) == [11, 12, 13]
    assert recorded_pids(tmp_path / "nothing-here") == []


def test_a_record_is_forgotten_only_by_the_pid_it_records(tmp_path: Path) -> None:
    mine = _record(tmp_path, "controller@witness", 42)
    forget_record(tmp_path, "controller@witness", 41)  # a successor's record stays
    assert mine.exists()
    forget_record(tmp_path, "controller@witness", 42)
    assert not mine.exists()
    forget_record(tmp_path, "controller@witness", 42)  # already gone: nothing to do
