"""The shipped scenarios: what each breaks, for how long, and what it is judged on."""

from __future__ import annotations

from dataclasses import dataclass

from alwayson.util.errors import NotFoundError


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    fault: str  # kill | hang | site-hang | site-loss | partition | slowness | controller-kill
    target: str  # instance | gateway | etcd | db-primary | site | witness | controller
    hold: float  # seconds the fault stays in force before it is undone
    needs_database: bool = False
    max_failed: int | None = None  # requests allowed to fail (None: judged on RTO only)
    failback: bool = False  # restore the site, then move the primary back
    primaries: bool = False  # sample writable primaries (never two)
    delay: float = 0.0
    jitter: float = 0.0


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "instance-kill",
            "SIGKILL one instance of the journey's service; the gateway routes around it and "
            "the controller restarts it. Judged: 0 failed requests.",
            "kill",
            "instance",
            hold=5.0,
            max_failed=0,
        ),
        Scenario(
            "instance-hang",
            "SIGSTOP one instance (it accepts connections but never answers); timeouts, "
            "ejection and the liveness probe must take it out. Undone with SIGCONT.",
            "hang",
            "instance",
            hold=8.0,
        ),
        Scenario(
            "site-loss",
            "Lose every process of a site (default: the database's primary site) under "
            "load; the other site serves with the data intact; then restore the site and "
            "fail the database back. Judged: RTO, 0 acknowledged writes lost, ledger.",
            "site-loss",
            "site",
            hold=15.0,
            failback=True,
        ),
        Scenario(
            "witness-loss",
            "Stop (SIGSTOP) every process of the witness site, its etcd member and the "
            "controller included, as a datacenter that drops off the network, under load. "
            "The two workload sites' etcd members are a quorum: the primary keeps its lease. "
            "Judged: 0 failed requests, never two writable primaries.",
            "site-hang",
            "witness",
            hold=30.0,
            needs_database=True,
            max_failed=0,
            primaries=True,
        ),
        Scenario(
            "site-partition",
            "Cut a site (default: the database's primary site) from every other site; "
            "the witness decides who writes. Judged: never two writable primaries, 0 "
            "acknowledged writes lost in synchronous mode.",
            "partition",
            "site",
            hold=12.0,
            needs_database=True,
            primaries=True,
        ),
        Scenario(
            "link-latency",
            "Add 50 ms (±10 ms) each way on the links of a site (default: the database's "
            "primary site); synchronous commits slow down, nothing may fail.",
            "slowness",
            "site",
            hold=8.0,
            needs_database=True,
            max_failed=0,
            delay=0.05,
            jitter=0.01,
        ),
        Scenario(
            "db-primary-kill",
            "SIGKILL the database primary's postmaster; the standby takes over. Judged: "
            "RTO, 0 acknowledged writes lost in synchronous mode, ledger.",
            "kill",
            "db-primary",
            hold=10.0,
            needs_database=True,
        ),
        Scenario(
            "gateway-kill",
            "SIGKILL a site's gateway; the front door sends new requests to the other "
            "site's gateway while the controller restarts it.",
            "kill",
            "gateway",
            hold=5.0,
        ),
        Scenario(
            "etcd-member-loss",
            "SIGKILL the etcd member of a site (default: the database's primary site) under "
            "load; the other two members keep the quorum, the primary keeps its lease, and "
            "the controller restarts the member on its data. Judged: 0 failed requests.",
            "kill",
            "etcd",
            hold=10.0,
            needs_database=True,
            max_failed=0,
            primaries=True,
        ),
        Scenario(
            "controller-kill",
            "SIGKILL the controller; the data plane keeps serving without it, then it is "
            "started again and re-adopts everything. Judged: 0 failed requests.",
            "controller-kill",
            "controller",
            hold=4.0,
            max_failed=0,
        ),
    )
}


def scenario(name: str) -> Scenario:
    found = SCENARIOS.get(name)
    if found is None:
        raise NotFoundError(
            f"unknown drill scenario {name!r}; the scenarios are: {', '.join(SCENARIOS)} "
            "(alwayson drill list --scenarios)"
        )
    return found
