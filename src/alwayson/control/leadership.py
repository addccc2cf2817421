"""Which controller leads: one leader among the sites' controllers, elected on etcd.

Every site runs a controller; exactly one of them acts (reconciles, releases, drills,
alerts). They agree on which through one etcd key, ``control/leader``, the pattern of
etcd's own ``concurrency.Election``:

- **Candidacy.** Each controller holds an etcd lease of ``ttl`` seconds (4 s by default),
  kept alive every ``ttl / 4`` and again within 0.2 s when a keep-alive fails (an etcd
  election leaves about a second without a raft leader; etcd extends every lease when
  its new leader takes over, so the gap never lets another candidate win early).
- **Campaign.** One transaction: *if the key is absent, put it* (who leads, its API address)
  *attached to my lease; else read it*. Only one candidate's put can succeed, and the key
  disappears with its lease when that leader stops renewing (crash, lost site, no
  quorum), so another candidate wins at its next turn.
- **Term.** The key's ``create_revision`` is the leader's term: a number no later leader
  can hold again. The leader's store writes all compare it (:meth:`Leadership.guard`, an
  :class:`~alwayson.store.etcd.EtcdStore` guard), so a write a deposed leader sends late
  is refused by etcd itself.
- **Stepping down on its own clock.** A leader acts only until ``renewed_at + ttl - margin``,
  ``renewed_at`` being when it *sent* its last successful keep-alive (or grant): etcd
  started counting the lease's ``ttl`` no earlier than that, so the leader stops acting
  ``margin`` seconds before any other candidate can win, even when etcd cannot be reached
  at all. The same argument as the database lease's (docs/DATA-DESIGN.md).

The class is a pure step function over an :class:`~alwayson.store.etcd_types.EtcdClient`
and a clock, so its rules run in unit tests on the in-memory etcd and the manual clock.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from alwayson.store.etcd_types import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    GuardFailed,
    Kv,
    Put,
    Read,
)
from alwayson.util.clocks import Clock

log = logging.getLogger("alwayson.leadership")

LEADER_KEY = "control/leader"
DEFAULT_TTL = 4.0
DEFAULT_MARGIN = 1.0
RETRY = 0.2
"""How soon a leader tries again after a renewal failed (an etcd election takes ~1 s)."""
FOLLOW_EVERY = 0.5
"""How often a candidate that does not lead campaigns: a lost leader's key is taken over
within this of its lease's expiry."""


@dataclass(frozen=True)
class Leader:
    """Who leads, as the key says."""

    site: str
    api: str
    pid: int
    term: int
    since: float

    def json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "api": self.api,
            "pid": self.pid,
            "term": self.term,
            "since": self.since,
        }


def leader_of(kv: Kv) -> Leader:
    body = kv.json()
    return Leader(
        site=str(body.get("site", "?")),
        api=str(body.get("api", "")),
        pid=int(body.get("pid", 0)),
        term=kv.create_revision,
        since=float(body.get("since", 0.0)),
    )


class Leadership:
    """One controller's candidacy. Call :meth:`step` every :attr:`every` seconds; act
    only while :meth:`leads` is true."""

    def __init__(
        self,
        etcd: EtcdClient,
        site: str,
        api: str,
        pid: int,
        clock: Clock,
        ttl: float = DEFAULT_TTL,
        margin: float = DEFAULT_MARGIN,
        key: str = LEADER_KEY,
    ) -> None:
        if not 0 < margin < ttl:
            raise ValueError(f"the margin ({margin}s) must be between 0 and the ttl ({ttl}s)")
        self.etcd = etcd
        self.site = site
        self.api = api
        self.pid = pid
        self.clock = clock
        self.ttl = ttl
        self.margin = margin
        self.key = key
        self.lease = 0
        self.renewed_at: float | None = None
        """Monotonic time the last successful keep-alive (or grant) of ``lease`` was sent."""
        self.term = 0
        """The key's create_revision while this candidate holds it, else 0."""
        self.leader: Leader | None = None
        """Who leads, as last read (this candidate included)."""
        self.last_error = ""
        self.failed = False
        """The last step could not reach etcd."""

    @property
    def every(self) -> float:
        """The pause before the next step: a leader renews every ``ttl / 4`` (at once again
        when a renewal failed), a candidate campaigns every ``FOLLOW_EVERY``."""
        if not self.term:
            return min(FOLLOW_EVERY, self.ttl / 4)
        return RETRY if self.failed else self.ttl / 4

    def leads(self) -> bool:
        if not self.term or self.renewed_at is None:
            return False
        return self.clock.monotonic() < self.renewed_at + self.ttl - self.margin

    def acts_until(self) -> float | None:
        """Monotonic time this leader must have stopped acting by (None: not leading)."""
        if not self.term or self.renewed_at is None:
            return None
        return self.renewed_at + self.ttl - self.margin

    def guard(self) -> list[Compare]:
        """What every write of the leader's store compares: the key is still this term's."""
        if not self.leads():
            raise GuardFailed(f"controller in {self.site} is not the leader")
        return [Compare(self.key, "create", self.term)]

    async def step(self) -> bool:
        """Keep the lease alive, campaign when no one leads, read who leads. Never raises
        for etcd being away: the candidate then simply stops leading on its own clock."""
        deadline = max(0.2, self.ttl - self.margin) / 2
        sent = self.clock.monotonic()
        self.failed = False
        try:
            if self.lease:
                if await self.etcd.keep_alive(self.lease, timeout=deadline) > 0:
                    self.renewed_at = sent
                else:  # etcd dropped it (expired while we were away): start afresh
                    self._lost("its etcd lease expired", drop_lease=True)
            if not self.lease:
                self.lease = await self.etcd.grant(self.ttl, timeout=deadline)
                self.renewed_at = sent
            await self._campaign(deadline)
        except (EtcdUnavailable, EtcdError) as exc:
            self.last_error = str(exc)
            self.failed = True
        if self.term and not self.leads():
            self._lost("it could not renew its lease in time")
        return self.leads()

    async def _campaign(self, deadline: float) -> None:
        """Take the key if nobody holds it, else learn who does.

        While a leader is known, a plain (linearizable) read tells whether its key is still
        there: a campaign's transaction holds a put, so etcd commits it through raft, an
        fsync on every member, even when its compare fails, and three controllers stepping
        twice a second made most of an idle platform's raft proposals. Only when the key
        is gone (or no leader is known) does a candidate send the transaction."""
        if self.leader is not None:
            found = await self.etcd.get(self.key, timeout=deadline)
            if found is not None:
                self._found(found)
                return
        since = self.clock.wall()
        body = {"site": self.site, "api": self.api, "pid": self.pid, "since": since}
        ok, reads, revision = await self.etcd.txn(
            [Compare(self.key, "version", 0)],
            [Put(self.key, json.dumps(body).encode(), lease=self.lease)],
            [Read(self.key)],
            timeout=deadline,
        )
        if ok:
            self.term = revision
            self.leader = Leader(self.site, self.api, self.pid, revision, since)
            log.info("controller in %s leads (term %d)", self.site, revision)
            return
        found = reads[0][0] if reads and reads[0] else None
        if found is None:  # gone between the compare and the read: next turn
            self.leader = None
            return
        self._found(found)

    def _found(self, found: Kv) -> None:
        """The leader key as read: who leads, and whether it is still this candidate."""
        self.leader = leader_of(found)
        if found.lease == self.lease:  # ours: a retried campaign, or a turn while leading
            self.term = found.create_revision
        elif self.term:
            self._lost(f"the {self.leader.site} controller leads now")

    def _lost(self, why: str, drop_lease: bool = False) -> None:
        if self.term:
            log.warning("controller in %s stops leading (term %d): %s", self.site, self.term, why)
        self.term = 0
        if drop_lease:
            self.lease = 0
            self.renewed_at = None

    async def resign(self) -> None:
        """Hand leadership on at once (a clean stop): delete the key if it is still ours,
        then drop the lease. Best effort: if etcd is away, the lease runs out."""
        term, lease = self.term, self.lease
        self.term, self.lease, self.renewed_at = 0, 0, None
        try:
            if term:
                await self.etcd.txn(
                    [Compare(self.key, "create", term)], [Delete(self.key)], timeout=1.0
                )
            if lease:
                await self.etcd.revoke(lease, timeout=1.0)
        except (EtcdUnavailable, EtcdError) as exc:
            self.last_error = str(exc)
