"""How the store keeps samples on disk: compressed chunks of raw samples and rollup buckets.

Layout (``path`` is a directory; ``None`` keeps everything in memory):

- ``series.db`` — SQLite (WAL mode, ``synchronous=FULL``) with the series catalogue and
  *chunks*: the samples of one series over one *block* of time (30 minutes by default,
  a whole number of ``rollup_step``), compressed. Timestamps are integer milliseconds,
  delta-encoded; values are XOR-ed with their predecessor (lossless, like Gorilla) and both
  are byte-shuffled before zlib, which is what makes regular scrapes small on disk.
- ``head-<block>.wal`` — the *head*: samples of the open block live in memory (two
  ``array('d')`` per series, 16 bytes a sample) and every ``append`` also writes them,
  checksummed, to the block's log segment. A process crash loses nothing that ``append``
  returned; a machine crash loses at most ``sync_interval`` seconds (the log is fsynced
  that often). Reopening replays the segments that are still there.

A rollup bucket keeps ``min, max, sum, count, last`` of its samples, the time of its last
sample and of a trailing staleness marker.
"""

from __future__ import annotations

import contextlib
import math
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alwayson.metrics.model import STALE, Field, Floats, Ints, stale_mask

ZLIB_LEVEL = 1  # level 6 saves 2% and costs 60% more CPU
WAL_HEADER = struct.Struct("<IId")  # samples, crc32 of the payload, time (s)
SEGMENT = "head-{:015d}.wal"  # by the block's start in ms: names sort by time
SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    UNIQUE (name, labels)
);
CREATE TABLE IF NOT EXISTS raw_chunks (
    series_id INTEGER NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS raw_by_series ON raw_chunks (series_id, first);
CREATE INDEX IF NOT EXISTS raw_by_age ON raw_chunks (last);
CREATE TABLE IF NOT EXISTS rollup_chunks (
    series_id INTEGER NOT NULL,
    window REAL NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollup_by_series ON rollup_chunks (series_id, window);
CREATE INDEX IF NOT EXISTS rollup_by_age ON rollup_chunks (window);
"""


def log_record(t: float, ids: array[int], values: array[float]) -> bytes:
    """One ``append`` in the head log: a header (count, CRC-32 of the payload, time),
    then the series ids (4 bytes each) and the values (8 bytes each)."""
    payload = ids.tobytes() + values.tobytes()
    return WAL_HEADER.pack(len(ids), zlib.crc32(payload), t) + payload


def read_log(data: bytes) -> tuple[list[tuple[float, array[int], array[float]]], int]:
    """The whole records of a head log segment, and where the last whole one ends (a torn
    tail after it is what a crash interrupted)."""
    records: list[tuple[float, array[int], array[float]]] = []
    offset = 0
    while offset + WAL_HEADER.size <= len(data):
        count, crc, t = WAL_HEADER.unpack_from(data, offset)
        body = offset + WAL_HEADER.size
        end = body + count * 12
        if end > len(data) or zlib.crc32(data[body:end]) != crc:
            break
        records.append(
            (t, array("I", data[body : body + count * 4]), array("d", data[body + count * 4 : end]))
        )
        offset = end
    return records, offset


class HeadSeries:
    """One series in the store's index, with its samples of the open block (the head)."""

    __slots__ = ("id", "labels", "last_t", "name", "scraped_stale", "times", "values")

    def __init__(self, ident: int, name: str, labels: dict[str, str]) -> None:
        self.id = ident
        self.name = name
        self.labels = labels
        self.times = array("d")
        self.values = array("d")
        self.last_t = -math.inf  # newest sample time anywhere (head or chunks)
        self.scraped_stale = False  # the newest sample is a stale marker

    def add(self, t: float, value: float) -> None:
        self.times.append(t)
        self.values.append(value)
        self.last_t = t


@dataclass
class Buckets:
    """Rollup buckets of one series, time ascending. ``t``: time (ms) of the bucket's last
    non-stale sample (0 when it has none); ``stale``: time (ms) of a trailing stale
    marker (0 when the bucket does not end stale)."""

    t: Ints
    stale: Ints
    mn: Floats
    mx: Floats
    sm: Floats
    cnt: Floats
    last: Floats

    def __len__(self) -> int:
        return len(self.t)

    def ends(self) -> Ints:
        return np.maximum(self.t, self.stale)

    def take(self, index: Any) -> Buckets:
        return Buckets(*(getattr(self, f)[index] for f in BUCKET_FIELDS))


BUCKET_FIELDS = ("t", "stale", "mn", "mx", "sm", "cnt", "last")


def ms_of(times: array[float]) -> Ints:
    return np.round(np.frombuffer(times, dtype=np.float64) * 1000.0).astype(np.int64)


def _pack(ints: Sequence[Ints], floats: Sequence[Floats]) -> bytes:
    """Integers as deltas, floats XOR-ed with their predecessor, then byte-shuffled (the
    1st bytes of every word, then the 2nd…) so that zlib sees long runs, then zlib."""
    rows = [np.diff(i, prepend=np.int64(0)).astype("<i8").view("<u8") for i in ints]
    for f in floats:
        bits = f.astype("<f8").view("<u8")
        xored = bits.copy()
        xored[1:] ^= bits[:-1]
        rows.append(xored)
    words = np.vstack(rows) if rows[0].size else np.empty((len(rows), 0), "<u8")
    k, n = words.shape
    return zlib.compress(
        words.view(np.uint8).reshape(k, n, 8).transpose(0, 2, 1).tobytes(), ZLIB_LEVEL
    )


def _unpack(blob: bytes, n_ints: int, n_floats: int, n: int) -> tuple[Ints, Floats]:
    """The inverse of ``_pack``: (n_ints, n) integers and (n_floats, n) floats."""
    k = n_ints + n_floats
    cube = np.frombuffer(zlib.decompress(blob), dtype=np.uint8, count=k * 8 * n)
    words = np.ascontiguousarray(cube.reshape(k, 8, n).transpose(0, 2, 1)).view("<u8")
    words = words.reshape(k, n)
    ints = np.cumsum(words[:n_ints].view("<i8"), axis=1).astype(np.int64)
    floats = np.bitwise_xor.accumulate(words[n_ints:], axis=1).view("<f8").astype(np.float64)
    return ints, floats


def pack_raw(ms: Ints, values: Floats) -> bytes:
    return _pack([ms], [values])


def unpack_raw(blob: bytes, n: int) -> tuple[Ints, Floats]:
    ints, floats = _unpack(blob, 1, 1, n)
    return ints[0], floats[0]


def pack_buckets(b: Buckets) -> bytes:
    return _pack([b.t, b.stale], [b.mn, b.mx, b.sm, b.cnt, b.last])


def unpack_buckets(blob: bytes, n: int) -> Buckets:
    ints, floats = _unpack(blob, 2, 5, n)
    return Buckets(ints[0], ints[1], *floats)


def roll_up(ms: Ints, values: Floats, step_ms: int) -> Buckets:
    """Aggregate raw samples (time ascending) into ``step_ms`` buckets."""
    bucket = ms // step_ms
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(ms)]
    ids = bucket[starts]
    stale = stale_mask(values)
    n = len(ids)
    out = Buckets(
        t=np.zeros(n, np.int64),
        stale=np.where(stale[ends - 1], ms[ends - 1], 0).astype(np.int64),
        mn=np.full(n, np.nan),
        mx=np.full(n, np.nan),
        sm=np.full(n, np.nan),
        cnt=np.zeros(n),
        last=np.full(n, np.nan),
    )
    fresh = ~stale
    if fresh.any():
        f_ms, f_v, f_bucket = ms[fresh], values[fresh], bucket[fresh]
        f_starts = np.flatnonzero(np.r_[True, f_bucket[1:] != f_bucket[:-1]])
        f_ends = np.r_[f_starts[1:], len(f_ms)]
        at = np.searchsorted(ids, f_bucket[f_starts])
        out.t[at] = f_ms[f_ends - 1]
        out.mn[at] = np.fmin.reduceat(f_v, f_starts)
        out.mx[at] = np.fmax.reduceat(f_v, f_starts)
        out.sm[at] = np.add.reduceat(f_v, f_starts)
        out.cnt[at] = f_ends - f_starts
        out.last[at] = f_v[f_ends - 1]
    return out


def concat_buckets(old: Buckets, new: Buckets, step_ms: int) -> Buckets:
    """``old`` then ``new`` (whose samples are all later); a bucket both hold is merged."""
    if len(old) and len(new) and old.ends()[-1] // step_ms == new.ends()[0] // step_ms:
        a, b = old.take(-1), new.take(0)
        a_sum = 0.0 if a.cnt == 0 else float(a.sm)
        b_sum = 0.0 if b.cnt == 0 else float(b.sm)
        both = a.cnt + b.cnt
        merged = Buckets(
            t=np.array([b.t if b.cnt > 0 else a.t], np.int64),
            stale=np.array([b.stale], np.int64),
            mn=np.array([np.fmin(a.mn, b.mn)]),
            mx=np.array([np.fmax(a.mx, b.mx)]),
            sm=np.array([a_sum + b_sum if both > 0 else math.nan]),
            cnt=np.array([both], np.float64),
            last=np.array([b.last if b.cnt > 0 else a.last]),
        )
        old = join_buckets(old.take(slice(0, -1)), merged)
        new = new.take(slice(1, None))
    return join_buckets(old, new)


def join_buckets(a: Buckets, b: Buckets) -> Buckets:
    return Buckets(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in BUCKET_FIELDS))


def bucket_points(b: Buckets, field: Field) -> tuple[Ints, Floats]:
    """A rollup chunk read as points: each bucket at the time of its last sample with the
    value of ``field``, and a staleness marker where a bucket ended stale."""
    real = b.cnt > 0
    chosen = {"last": b.last, "min": b.mn, "max": b.mx, "sum": b.sm, "count": b.cnt}[field]
    marked = b.stale > 0
    t = np.concatenate([b.t[real], b.stale[marked]])
    v = np.concatenate([chosen[real], np.full(int(marked.sum()), STALE)])
    order = np.argsort(t, kind="stable")
    return t[order], v[order]


def disk_bytes(path: Path) -> int:
    """What a store's files take on disk: the database, its WAL and the head log."""
    files = [path / "series.db", path / "series.db-wal", *path.glob("head-*.wal")]
    total = 0
    for file in files:
        with contextlib.suppress(OSError):
            total += file.stat().st_size
    return total
