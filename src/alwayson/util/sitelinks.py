"""The state of the site links: which pairs of sites are cut apart, and which are slowed.

One small JSON file (``<state dir>/data/partitions.json``) holds it, written by a drill or
a test and read by everything that carries traffic between sites: the database agents'
relays (cuts and slowness) and the gateways and front doors (cuts only: HTTP traffic is
not slowed). Nothing needs to run for a fault to take hold, and undoing one is one write::

    {"cut": [["jakarta", "witness"]],
     "slow": [{"between": ["jakarta", "surabaya"], "delay": 0.05, "jitter": 0.01,
               "rate": null}]}

Pairs are unordered; a site always reaches itself. A file with only ``"cut"`` (the
original format) still reads. Readers poll the file's stamp (modification time, size,
inode), so a change is seen within one poll and an unchanged file costs one ``stat``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Partitions", "Slowness", "read_partitions", "write_partitions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slowness:
    """Added latency (and optionally a bandwidth cap) on the link between two sites.

    ``delay`` is one-way, applied in each direction (so a round trip gains ``2 * delay``);
    every chunk also waits a uniform ``0..jitter`` extra, without ever overtaking the chunk
    before it. ``rate`` caps bytes per second per connection and direction (None: no cap).
    """

    between: tuple[str, str]
    delay: float
    jitter: float = 0.0
    rate: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "between", tuple(self.between))
        if len(self.between) != 2 or not all(isinstance(s, str) and s for s in self.between):
            raise ValueError(f"between must name two sites, not {self.between!r}")
        if self.between[0] == self.between[1]:
            raise ValueError(f"a site is never slowed from itself ({self.between[0]!r})")
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be zero or more seconds, not {value!r}")
        rate = self.rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate < 1):
            raise ValueError(f"rate must be a whole number of bytes per second, not {rate!r}")


def _slowness_json(slowness: Slowness) -> dict[str, Any]:
    return {
        "between": list(slowness.between),
        "delay": slowness.delay,
        "jitter": slowness.jitter,
        "rate": slowness.rate,
    }


def _parse(text: str) -> tuple[list[tuple[str, str]], list[Slowness]]:
    """The cuts and slowness of a file's text. A document of the wrong shape raises
    ValueError; an entry of the wrong shape is left out (with a warning for a slowness)."""
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("the file must hold a JSON object")
    pairs = document.get("cut", [])
    slow = document.get("slow", [])
    if not isinstance(pairs, list):
        raise ValueError("'cut' must be a list of [site, site] pairs")
    if not isinstance(slow, list):
        raise ValueError("'slow' must be a list of objects")
    cut = [
        (p[0], p[1])
        for p in pairs
        if isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
    ]
    slowed: list[Slowness] = []
    for entry in slow:
        try:
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            between = entry.get("between")
            if not isinstance(between, list) or len(between) != 2:
                raise ValueError("'between' must be a list of two sites")
            slowed.append(
                Slowness(
                    between=(between[0], between[1]),
                    delay=entry.get("delay", 0.0),
                    jitter=entry.get("jitter", 0.0),
                    rate=entry.get("rate"),
                )
            )
        except ValueError as exc:
            log.warning("ignoring the slowness %r: %s", entry, exc)
    return cut, slowed


class Partitions:
    """What is in force on the site links, re-read by :meth:`refresh` when the file changed.

    Nothing is cut or slowed before the first refresh, nor while the file is missing. A
    file that cannot be read or parsed is logged and the previous state kept (a writer
    replaces the file atomically, so that is someone else's mistake, not a torn write).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._cut: frozenset[frozenset[str]] = frozenset()
        self._slow: dict[frozenset[str], Slowness] = {}

    def refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._cut, self._slow = None, frozenset(), {}
            return
        except OSError as exc:
            log.warning("%s: cannot stat (%s); keeping the previous partitions", self.path, exc)
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            cut, slow = _parse(self.path.read_text())
        except OSError as exc:  # tried again at the next refresh
            log.warning("%s: unreadable (%s); keeping the previous partitions", self.path, exc)
            return
        except ValueError as exc:  # said once: tried again when the file changes
            log.warning("%s: not valid (%s); keeping the previous partitions", self.path, exc)
            self._stamp = stamp
            return
        self._cut = frozenset(frozenset(pair) for pair in cut if pair[0] != pair[1])
        # A pair named twice: the last entry wins.
        self._slow = {frozenset(s.between): s for s in slow}
        self._stamp = stamp

    def connected(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) not in self._cut

    def slowness(self, a: str, b: str) -> Slowness | None:
        """The slowness between two sites (either order), None when the link is not slowed.
        The same object is returned until the file changes."""
        if a == b or not self._slow:
            return None
        return self._slow.get(frozenset((a, b)))

    @property
    def cut(self) -> frozenset[frozenset[str]]:
        return self._cut


def write_partitions(
    path: Path, cut: Sequence[tuple[str, str]] = (), slow: Sequence[Slowness] = ()
) -> None:
    """Replace everything in force atomically (what drills and tests call); no arguments
    heal every link. Readers see the change at their next poll."""
    document = {"cut": [list(pair) for pair in cut], "slow": [_slowness_json(s) for s in slow]}
    data = json.dumps(document).encode()
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _differ_in_stamp(Path(tmp_name), path)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _differ_in_stamp(new: Path, old: Path) -> None:
    """Two writes within one tick of the file system's clock, of the same size, could
    look unchanged to a reader whose inode number was reused: move the new modification
    time past the old one."""
    try:
        before = os.stat(old)
    except FileNotFoundError:
        return
    after = os.stat(new)
    if after.st_mtime_ns <= before.st_mtime_ns:
        os.utime(new, ns=(after.st_atime_ns, before.st_mtime_ns + 1))


def read_partitions(path: Path) -> tuple[list[tuple[str, str]], list[Slowness]]:
    """What the file holds now: ``(cut, slow)``, both empty when there is no file.

    A file that cannot be parsed reads as empty (and is logged), so that a drill undoing
    its fault by writing back what it read leaves a clean file rather than none.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], []
    try:
        return _parse(text)
    except ValueError as exc:
        log.warning("%s: unreadable (%s); reading it as nothing in force", path, exc)
        return [], []
