"""The controller's way to the databases' keys on etcd: one client per cluster, made when a
spec first needs it and kept while the spec's members and root stay the same."""

from __future__ import annotations

from pathlib import Path

from alwayson.data.board import Board
from alwayson.data.layout import etcd_members, etcd_root, witness_of
from alwayson.spec.models import PlatformSpec
from alwayson.store.base import StateStore
from alwayson.store.etcd import Etcd
from alwayson.store.etcd_store import EtcdStore
from alwayson.store.etcd_types import EtcdClient, MemberAdmin
from alwayson.store.members import endpoints_from
from alwayson.util.certs import CLIENT, leaf_paths
from alwayson.util.clocks import Clock


class EtcdBoards:
    def __init__(self, state_dir: Path, clock: Clock, site: str | None = None) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.site = site
        """The site this controller runs in: its own member is asked first."""
        self._made: tuple[tuple[tuple[str, ...], str], Board, EtcdStore] | None = None
        self._retired: list[EtcdClient] = []

    def _get(self, spec: PlatformSpec) -> tuple[Board, EtcdStore]:
        # The controller's own site's member first (the witness's, for the only controller).
        first = self.site or witness_of(spec)
        endpoints = endpoints_from(etcd_members(spec, self.state_dir), first)
        ident = (tuple(endpoints), etcd_root(spec))
        if self._made is not None and self._made[0] == ident:
            return self._made[1], self._made[2]
        if self._made is not None:
            self._retired.append(self._made[2].etcd)
        etcd = Etcd(endpoints, leaf_paths(self.state_dir, CLIENT))
        board = Board(etcd, ident[1], self.clock)
        self._made = (ident, board, EtcdStore(etcd, ident[1]))
        return board, self._made[2]

    def board(self, spec: PlatformSpec) -> Board:
        return self._get(spec)[0]

    def keys(self, spec: PlatformSpec) -> StateStore:
        return self._get(spec)[1]

    def cluster(self, spec: PlatformSpec) -> MemberAdmin:
        etcd = self._get(spec)[1].etcd
        assert isinstance(etcd, Etcd)
        return etcd

    async def close(self) -> None:
        for etcd in self._retired:
            await etcd.close()
        self._retired.clear()
        if self._made is not None:
            await self._made[2].etcd.close()
            self._made = None
