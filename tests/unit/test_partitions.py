"""``Partitions``: the cut site pairs every relay reads from ``data/partitions.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alwayson.util.sitelinks import Partitions, write_partitions

SITES = ("west", "east", "witness")


def cut_pairs(partitions: Partitions) -> set[frozenset[str]]:
    """The pairs that cannot talk, as seen through ``connected``."""
    return {
        frozenset((a, b)) for a in SITES for b in SITES if a != b and not partitions.connected(a, b)
    }


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "partitions.json"


def test_reads_what_write_partitions_writes(path: Path) -> None:
    write_partitions(path, [("west", "witness"), ("east", "west")])
    partitions = Partitions(path)
    partitions.refresh()

    assert cut_pairs(partitions) == {frozenset(("west", "witness")), frozenset(("west", "east"))}
    assert partitions.connected("east", "witness")
    assert json.loads(path.read_text()) == {
        "cut": [["west", "witness"], ["east", "west"]],
        "slow": [],
    }
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_cut_is_symmetric(path: Path) -> None:
    write_partitions(path, [("east", "witness")])
    partitions = Partitions(path)
    partitions.refresh()

    assert not partitions.connected("east", "witness")
    assert not partitions.connected("witness", "east")
    assert partitions.connected("east", "east")  # a site always reaches itself


def test_nothing_is_cut_before_the_first_refresh(path: Path) -> None:
    write_partitions(path, [("west", "east")])

    assert cut_pairs(Partitions(path)) == set()


def test_a_new_cut_replaces_the_old_one(path: Path) -> None:
    partitions = Partitions(path)
    write_partitions(path, [("west", "east")])
    partitions.refresh()

    write_partitions(path, [("east", "witness"), ("west", "witness")])
    os.utime(path, ns=(1, 1))  # a different stamp even on a coarse clock
    partitions.refresh()

    assert cut_pairs(partitions) == {
        frozenset(("east", "witness")),
        frozenset(("west", "witness")),
    }


def test_an_unchanged_file_is_not_read_again(path: Path) -> None:
    write_partitions(path, [("west", "east")])
    partitions = Partitions(path)
    partitions.refresh()
    before = path.stat()

    # same size, same mtime: the stamp says nothing changed, so the new cut is not seen
    path.write_text(path.read_text().replace('"east"', '"ease"'))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    partitions.refresh()

    assert not partitions.connected("west", "east")
    assert partitions.connected("west", "ease")

    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    partitions.refresh()

    assert partitions.connected("west", "east")
    assert not partitions.connected("west", "ease")


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "{not json",
        '{"cut": [["west", "east"]',
        "[1, 2]",
        '"cut"',
    ],
)
def test_garbage_keeps_the_previous_cut(path: Path, garbage: str) -> None:
    write_partitions(path, [("west", "witness")])
    partitions = Partitions(path)
    partitions.refresh()

    path.write_text(garbage)
    os.utime(path, ns=(1, 1))
    partitions.refresh()

    assert cut_pairs(partitions) == {frozenset(("west", "witness"))}

    # and the next good write is picked up again
    write_partitions(path, [("east", "witness")])
    os.utime(path, ns=(2, 2))
    partitions.refresh()

    assert cut_pairs(partitions) == {frozenset(("east", "witness"))}


@pytest.mark.parametrize("garbage", ['{"cut": 5}', '{"cut": "ab"}', "[1, 2]"])
def test_json_of_the_wrong_shape_keeps_the_previous_cut(path: Path, garbage: str) -> None:
    write_partitions(path, [("west", "witness")])
    partitions = Partitions(path)
    partitions.refresh()

    path.write_text(garbage)
    os.utime(path, ns=(1, 1))
    partitions.refresh()

    assert cut_pairs(partitions) == {frozenset(("west", "witness"))}


def test_pairs_that_are_not_pairs_are_ignored(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps({"cut": [["west"], ["west", "east", "witness"], ["east", "witness"]]})
    )
    partitions = Partitions(path)
    partitions.refresh()

    assert cut_pairs(partitions) == {frozenset(("east", "witness"))}


def test_a_missing_file_means_fully_connected(path: Path) -> None:
    partitions = Partitions(path)
    partitions.refresh()

    assert cut_pairs(partitions) == set()

    write_partitions(path, [("west", "east"), ("west", "witness")])
    partitions.refresh()
    assert cut_pairs(partitions) == {frozenset(("west", "east")), frozenset(("west", "witness"))}

    path.unlink()
    partitions.refresh()

    assert cut_pairs(partitions) == set()


def test_an_empty_cut_list_heals_everything(path: Path) -> None:
    write_partitions(path, [("west", "east")])
    partitions = Partitions(path)
    partitions.refresh()

    write_partitions(path, [])
    os.utime(path, ns=(1, 1))
    partitions.refresh()

    assert cut_pairs(partitions) == set()
