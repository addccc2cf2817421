"""etcd, the store every site shares: its v3 gRPC API over mutual TLS, every member's
address known (the :class:`StateStore` on top is ``store/etcd_store.py``).

The only module that imports aetcd (its generated gRPC stubs and messages) and grpc.
aetcd's own ``Client`` speaks plaintext to one address; the platform needs TLS with its
own CA and a client that moves to the next member when one stops answering, so this
driver opens its own channels and uses aetcd's stubs on them.

Failover between members: every call goes to the member that answered last (the caller's
own site's member first). A call that cannot reach it, or that it cannot serve (no
leader, a timeout), is tried on the next member within what is left of the call's
deadline; after that the next call starts there. A compare-and-set retried this way
may have taken effect the first time: callers that must know write a value of their own
(a lease id, a nonce) and read it back when the compare fails.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

# gRPC core registers pthread_atfork handlers unless told not to. The database agent
# forks PostgreSQL and its tools (as another user, so without vfork) while gRPC threads
# run: the child then ran gRPC's handler before exec, which aborted (seen in CI:
# pg_basebackup died of SIGABRT in ev_epoll1_linux.cc 'next_worker->state == KICKED').
# No process of the platform uses gRPC in a forked child: every fork here is followed
# by exec, so the handlers are never needed. Read when grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import grpc.aio
from aetcd import rpc

from alwayson.store.etcd_types import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Kv,
    MemberInfo,
    Op,
    Put,
    Read,
    Target,
    _range_end,
)
from alwayson.util.certs import CLUSTER_NAME, TlsFiles

# The values and errors live in the grpc-free etcd_types; importers of this module keep
# finding them here.
__all__ = [
    "Compare",
    "Delete",
    "Etcd",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Kv",
    "MemberInfo",
    "Op",
    "Put",
    "Read",
    "Target",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 2.0
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,  # "etcdserver: request timed out", "no leader" come as these
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
}
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", CLUSTER_NAME),
    ("grpc.default_authority", CLUSTER_NAME),
    # A member that hangs (a stopped process, a cut link) keeps its TCP connection open:
    # pings find it within 2 s; the members accept pings every second (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect at once, and give up a connection attempt after 1 s (not gRPC's 20 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]


_OPS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS}
_OPS[">"] = rpc.Compare.GREATER


def _kv(kv: Any) -> Kv:
    return Kv(
        key=kv.key.decode(),
        value=bytes(kv.value),
        version=int(kv.version),
        mod_revision=int(kv.mod_revision),
        create_revision=int(kv.create_revision),
        lease=int(kv.lease),
    )


def _compare(c: Compare) -> Any:
    msg = rpc.Compare(key=c.key.encode(), result=_OPS[c.op])
    if c.target == "version":
        msg.target, msg.version = rpc.Compare.VERSION, int(c.value)
    elif c.target == "mod":
        msg.target, msg.mod_revision = rpc.Compare.MOD, int(c.value)
    elif c.target == "create":
        msg.target, msg.create_revision = rpc.Compare.CREATE, int(c.value)
    elif c.target == "lease":
        msg.target, msg.lease = rpc.Compare.LEASE, int(c.value)
    else:
        assert isinstance(c.value, bytes)
        msg.target, msg.value = rpc.Compare.VALUE, c.value
    return msg


def _request(op: Op) -> Any:
    if isinstance(op, Put):
        put = rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease, prev_kv=True)
        return rpc.RequestOp(request_put=put)
    if isinstance(op, Delete):
        key = op.key.encode()
        end = _range_end(key) if op.prefix else b""
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key.encode()))


@dataclass
class _Member:
    address: str
    channel: grpc.aio.Channel | None = None
    kv: Any = None
    lease: Any = None
    maintenance: Any = None
    cluster: Any = None


class Etcd:
    """A client of every member of one etcd cluster (``host:port`` each, own site first)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        tls: TlsFiles | None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.members = [_Member(a) for a in endpoints]
        self.tls = tls
        self.timeout = timeout
        self.current = 0
        self.last_error = ""

    @property
    def endpoints(self) -> list[str]:
        return [m.address for m in self.members]

    def _open(self, member: _Member) -> _Member:
        if member.channel is None:
            if self.tls is None:
                channel = grpc.aio.insecure_channel(member.address, options=CHANNEL_OPTIONS)
            else:
                ca, key, cert = self.tls.read()
                creds = grpc.ssl_channel_credentials(ca, key, cert)
                channel = grpc.aio.secure_channel(member.address, creds, options=CHANNEL_OPTIONS)
            member.channel = channel
            member.kv = rpc.KVStub(channel)
            member.lease = rpc.LeaseStub(channel)
            member.maintenance = rpc.MaintenanceStub(channel)
            member.cluster = rpc.ClusterStub(channel)
        return member

    async def _call(
        self, what: str, call: Callable[[_Member, float], Awaitable[T]], timeout: float | None
    ) -> T:
        deadline = time.monotonic() + (timeout or self.timeout)
        errors: list[str] = []
        count = len(self.members)
        for attempt in range(count):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            index = (self.current + attempt) % count
            member = self._open(self.members[index])
            # Leave the other members a share of the time: a hung member costs one share.
            share = max(left / (count - attempt), min(left, 0.25))
            try:
                result = await asyncio.wait_for(call(member, share), share + 0.05)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise EtcdError(f"etcd {member.address}: {what}: {exc.details()}") from exc
                errors.append(f"{member.address}: {exc.code().name} {exc.details() or ''}".strip())
            except TimeoutError:
                errors.append(f"{member.address}: no answer in {share:.2f}s")
            else:
                self.current = index
                return result
            self.current = (index + 1) % count
        self.last_error = "; ".join(errors) or "no time left"
        raise EtcdUnavailable(f"etcd: {what}: no member answered ({self.last_error})")

    # -- key/value -------------------------------------------------------------------------

    async def get(self, key: str, timeout: float | None = None) -> Kv | None:
        async def call(m: _Member, t: float) -> Any:
            return await m.kv.Range(rpc.RangeRequest(key=key.encode()), timeout=t)

        reply = await self._call(f"get {key}", call, timeout)
        return _kv(reply.kvs[0]) if reply.count else None

    async def range(
        self,
        prefix: str,
        limit: int = 0,
        newest_first: bool = False,
        timeout: float | None = None,
    ) -> list[Kv]:
        """Keys starting with ``prefix`` in key order (descending with ``newest_first``)."""
        key = prefix.encode()
        request = rpc.RangeRequest(key=key, range_end=_range_end(key), limit=limit)
        if newest_first:
            request.sort_order = rpc.RangeRequest.DESCEND
            request.sort_target = rpc.RangeRequest.KEY

        async def call(m: _Member, t: float) -> Any:
            return await m.kv.Range(request, timeout=t)

        reply = await self._call(f"range {prefix}", call, timeout)
        return [_kv(kv) for kv in reply.kvs]

    async def put(
        self, key: str, value: bytes, lease: int = 0, timeout: float | None = None
    ) -> tuple[int, int]:
        """Overwrite; returns (the key's new version, the store's revision)."""

        async def call(m: _Member, t: float) -> Any:
            request = rpc.PutRequest(key=key.encode(), value=value, lease=lease, prev_kv=True)
            return await m.kv.Put(request, timeout=t)

        reply = await self._call(f"put {key}", call, timeout)
        before = int(reply.prev_kv.version) if reply.HasField("prev_kv") else 0
        return before + 1, int(reply.header.revision)

    async def delete(self, key: str, prefix: bool = False, timeout: float | None = None) -> int:
        async def call(m: _Member, t: float) -> Any:
            return await m.kv.DeleteRange(
                _request(Delete(key, prefix)).request_delete_range, timeout=t
            )

        reply = await self._call(f"delete {key}", call, timeout)
        return int(reply.deleted)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        timeout: float | None = None,
    ) -> tuple[bool, list[list[Kv]], int]:
        """All of ``compare`` true: ``success`` runs, else ``failure``, atomically.
        Returns (succeeded, what each Read found, the store's revision)."""
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compare],
            success=[_request(op) for op in success],
            failure=[_request(op) for op in failure],
        )

        async def call(m: _Member, t: float) -> Any:
            return await m.kv.Txn(request, timeout=t)

        reply = await self._call("transaction", call, timeout)
        reads = [
            [_kv(kv) for kv in r.response_range.kvs]
            for r in reply.responses
            if r.WhichOneof("response") == "response_range"
        ]
        return bool(reply.succeeded), reads, int(reply.header.revision)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: float, timeout: float | None = None) -> int:
        """A new lease of at least ``ttl`` seconds (etcd counts whole seconds)."""
        seconds = max(1, math.ceil(ttl))

        async def call(m: _Member, t: float) -> Any:
            return await m.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=seconds), timeout=t)

        reply = await self._call("lease grant", call, timeout)
        if reply.error:
            raise EtcdError(f"etcd: lease grant: {reply.error}")
        return int(reply.ID)

    async def keep_alive(self, lease: int, timeout: float | None = None) -> int:
        """Refresh ``lease`` once; returns its new TTL, 0 when it no longer exists."""

        async def call(m: _Member, t: float) -> Any:
            stream = m.lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=t)
            async for reply in stream:
                return reply
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "keep-alive stream closed without an answer",
            )

        reply = await self._call("lease keep-alive", call, timeout)
        return int(reply.TTL)

    async def revoke(self, lease: int, timeout: float | None = None) -> None:
        async def call(m: _Member, t: float) -> Any:
            try:
                return await m.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=t)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None  # gone already: what a revoke wants
                raise

        await self._call("lease revoke", call, timeout)

    # -- the cluster -----------------------------------------------------------------------

    async def member_status(self, address: str, timeout: float = 1.0) -> dict[str, Any]:
        """One member's own view (version, leader, raft term), without failover."""
        member = next((m for m in self.members if m.address == address), None)
        if member is None:
            member = _Member(address)
            self.members.append(member)
        self._open(member)
        try:
            reply = await asyncio.wait_for(
                member.maintenance.Status(rpc.StatusRequest(), timeout=timeout), timeout + 0.05
            )
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            raise EtcdUnavailable(f"etcd member {address}: {exc!r}") from exc
        return {
            "version": reply.version,
            "member_id": int(reply.header.member_id),
            "leader": int(reply.leader),
            "raft_term": int(reply.raftTerm),
            "db_size": int(reply.dbSize),
            "errors": list(reply.errors),
        }

    async def move_leader(self, address: str, timeout: float = 2.0) -> str | None:
        """Make the member at ``address`` raft's leader (etcd's MoveLeader, sent to the
        member that leads now); what was done, None when it leads already."""
        target = await self.member_status(address, timeout)
        if target["leader"] == target["member_id"]:
            return None
        leader = None
        for endpoint in self.endpoints:
            try:
                if (await self.member_status(endpoint, timeout))["member_id"] == target["leader"]:
                    leader = endpoint
                    break
            except EtcdUnavailable:
                continue
        if leader is None:
            raise EtcdUnavailable(f"etcd: move leader: the raft leader is none of {self.endpoints}")
        member = self._open(next(m for m in self.members if m.address == leader))
        try:
            await asyncio.wait_for(
                member.maintenance.MoveLeader(
                    rpc.MoveLeaderRequest(targetID=target["member_id"]), timeout=timeout
                ),
                timeout + 0.05,
            )
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            raise EtcdUnavailable(f"etcd {leader}: move leader to {address}: {exc!r}") from exc
        return f"etcd's raft leader moved from {leader} to {address}"

    async def member_list(self, timeout: float | None = None) -> list[MemberInfo]:
        """The cluster's members as the answering member knows them; a member added but
        never started has no name yet."""

        async def call(m: _Member, t: float) -> Any:
            return await m.cluster.MemberList(rpc.MemberListRequest(), timeout=t)

        reply = await self._call("member list", call, timeout)
        return [_member_info(m) for m in reply.members]

    async def member_remove(self, member_id: int, timeout: float | None = None) -> None:
        async def call(m: _Member, t: float) -> Any:
            return await m.cluster.MemberRemove(rpc.MemberRemoveRequest(ID=member_id), timeout=t)

        await self._call("member remove", call, timeout)

    async def member_add(self, peer_urls: Sequence[str], timeout: float | None = None) -> int:
        """Add a member (to be started with ``--initial-cluster-state=existing``); its id."""

        async def call(m: _Member, t: float) -> Any:
            request = rpc.MemberAddRequest(peerURLs=list(peer_urls))
            return await m.cluster.MemberAdd(request, timeout=t)

        reply = await self._call("member add", call, timeout)
        return int(reply.member.ID)

    async def close(self) -> None:
        for member in self.members:
            if member.channel is not None:
                await member.channel.close()
            member.channel = None


def _member_info(m: Any) -> MemberInfo:
    return MemberInfo(int(m.ID), str(m.name), list(m.peerURLs), list(m.clientURLs))
