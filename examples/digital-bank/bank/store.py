"""In-memory state of one instance (until state moves to PostgreSQL), with bounded size.

Nothing is written to disk. Each store keeps at most ``BANK_MAX_RECORDS`` records (default
100 000), dropping the oldest, so a long load test cannot exhaust memory.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
MAX_RECORDS = int(os.environ.get("BANK_MAX_RECORDS", "100000"))


def new_id(prefix: str) -> str:
    """A random id unique across instances and sites, e.g. ``cus_3f9a0c2b71d4e85a``."""
    return f"{prefix}_{os.urandom(8).hex()}"


def now_iso(at: float | None = None) -> str:
    at = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def luhn_digit(digits: str) -> str:
    """The check digit that makes ``digits + it`` pass the Luhn test (cards, account numbers)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def random_digits(count: int) -> str:
    return str(int.from_bytes(os.urandom(8), "big") % 10**count).zfill(count)


class Store(Generic[T]):
    """An insertion-ordered map that forgets its oldest records beyond ``limit``."""

    def __init__(
        self, limit: int = MAX_RECORDS, on_evict: Callable[[str, T], None] | None = None
    ) -> None:
        self._items: OrderedDict[str, T] = OrderedDict()
        self._limit = limit
        self._on_evict = on_evict

    def put(self, key: str, value: T) -> T:
        self._items[key] = value
        while len(self._items) > self._limit:
            old_key, old = self._items.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(old_key, old)
        return value

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> Iterator[T]:
        return iter(self._items.values())

    def latest(self, count: int) -> list[T]:
        out: list[T] = []
        for value in reversed(self._items.values()):
            if len(out) >= count:
                break
            out.append(value)
        return out
