"""What an etcd client speaks, without gRPC: the values, the operations of a transaction,
the errors, and :class:`EtcdClient`, the API that the real client (``store/etcd.py``) and
the in-memory fake (``store/memory_etcd.py``) both offer.

Code above the store (the database lease) types its dependency as :class:`EtcdClient`, so
its unit tests run on the fake without loading grpc.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from alwayson.util.errors import TemporaryError


class EtcdUnavailable(TemporaryError):
    """No member could serve the call within its deadline."""


class GuardFailed(TemporaryError):
    """A guarded write refused, nothing changed: the writer's guard (the leader
    controller's term) no longer holds. Its writer must stop acting; a later leader
    writes instead."""


class EtcdError(Exception):
    """etcd refused a call for a reason that trying again will not fix."""


@dataclass(frozen=True)
class Kv:
    key: str
    value: bytes
    version: int
    """Changes since the key was created (1 after the first put); 0 never appears here."""
    mod_revision: int
    create_revision: int
    lease: int

    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.value)
        return loaded


@dataclass(frozen=True)
class MemberInfo:
    """One member of the cluster as etcd lists it (``name`` is empty until it starts)."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]


Target = Literal["version", "mod", "create", "value", "lease"]


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` compared with ``value``
    (``version == 0`` is "absent")."""

    key: str
    target: Target
    value: int | bytes
    op: Literal["==", "!=", "<", ">"] = "=="


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Read:
    key: str


Op = Put | Delete | Read


def holds(c: Compare, kv: Kv | None) -> bool:
    """Whether ``c`` holds of ``kv`` (None: the key is absent), as etcd judges it."""
    if c.target == "value":
        if kv is None:
            return False  # etcd: a missing key's value compares false, whatever the op
        assert isinstance(c.value, bytes)
        ours, theirs = kv.value, c.value
        diff = (ours > theirs) - (ours < theirs)
    else:
        ours_int = 0
        if kv is not None:
            ours_int = {
                "version": kv.version,
                "mod": kv.mod_revision,
                "create": kv.create_revision,
                "lease": kv.lease,
            }[c.target]
        theirs_int = int(c.value)
        diff = (ours_int > theirs_int) - (ours_int < theirs_int)
    return {"==": diff == 0, "!=": diff != 0, "<": diff < 0, ">": diff > 0}[c.op]


def _range_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's prefix range)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class MemberAdmin(Protocol):
    """etcd's membership calls (the real client's; the in-memory etcd has one member)."""

    async def member_list(self, timeout: float | None = None) -> list[MemberInfo]: ...

    async def member_remove(self, member_id: int, timeout: float | None = None) -> None: ...

    async def member_add(self, peer_urls: Sequence[str], timeout: float | None = None) -> int: ...

    async def move_leader(self, address: str, timeout: float = 2.0) -> str | None:
        """Make the member at ``address`` raft's leader; what was done (None: it was)."""
        ...


class EtcdClient(Protocol):
    """The calls of :class:`alwayson.store.etcd.Etcd` (which documents them); every one
    may raise :class:`EtcdUnavailable`."""

    current: int
    last_error: str

    @property
    def endpoints(self) -> list[str]: ...

    async def get(self, key: str, timeout: float | None = None) -> Kv | None: ...

    async def range(
        self,
        prefix: str,
        limit: int = 0,
        newest_first: bool = False,
        timeout: float | None = None,
    ) -> list[Kv]: ...

    async def put(
        self, key: str, value: bytes, lease: int = 0, timeout: float | None = None
    ) -> tuple[int, int]: ...

    async def delete(self, key: str, prefix: bool = False, timeout: float | None = None) -> int: ...

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        timeout: float | None = None,
    ) -> tuple[bool, list[list[Kv]], int]: ...

    async def grant(self, ttl: float, timeout: float | None = None) -> int: ...

    async def keep_alive(self, lease: int, timeout: float | None = None) -> int: ...

    async def revoke(self, lease: int, timeout: float | None = None) -> None: ...

    async def member_status(self, address: str, timeout: float = 1.0) -> dict[str, Any]: ...

    async def close(self) -> None: ...
