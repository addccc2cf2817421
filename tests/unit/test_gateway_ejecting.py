"""Outlier ejection (consecutive 5xx or connect failures), timed re-admission with a
doubling ejection time, and slow start, on a clock the tests move by hand."""

from __future__ import annotations

import random
from collections import Counter

import pytest

try:
    from test_gateway_harness import A, B, Harness, backend, error_of, split, table
except ImportError:  # collected as part of a package
    from .test_gateway_harness import A, B, Harness, backend, error_of, split, table

from alwayson.gateway.balancing import RoutePlan, Target, choose_target
from alwayson.gateway.ejecting import OutlierPolicy
from alwayson.gateway.exchanges import CoarseClock
from alwayson.gateway.metrics import GatewayMetrics
from alwayson.gateway.upstreams import Upstream

POLICY = OutlierPolicy(
    consecutive_5xx=5,
    consecutive_connect_failures=1,
    base_seconds=5,
    max_seconds=40,
    slow_start_seconds=10,
    slow_start_floor=0.1,
)


def upstream() -> Upstream:
    return Upstream("127.1.1.1", 8000, clock=CoarseClock(0.0))


def test_five_failures_in_a_row_eject_and_one_success_resets_the_count() -> None:
    up = upstream()
    for _ in range(4):
        assert not POLICY.failed(up, 100.0)
    POLICY.succeeded(up, 100.0)
    for _ in range(4):
        assert not POLICY.failed(up, 100.0)
    assert up.ejected_until == 0.0
    assert POLICY.failed(up, 100.0)
    assert up.ejected_until == 105.0 and up.ejected_count == 1


def test_ejection_time_doubles_when_it_fails_again_and_is_capped() -> None:
    up = upstream()
    now = 0.0
    lengths = []
    for _ in range(6):
        while not POLICY.failed(up, now):
            pass
        lengths.append(up.ejected_until - now)
        now = up.ejected_until  # re-admitted: and it fails again at once
    assert lengths == [5, 10, 20, 40, 40, 40]


def test_healthy_as_long_as_its_last_ejection_starts_again_from_the_base() -> None:
    up = upstream()
    while not POLICY.failed(up, 0.0):
        pass
    while not POLICY.failed(up, 5.0):
        pass
    assert up.ejected_until == 15.0  # second ejection: 10 s
    POLICY.succeeded(up, 20.0)  # 5 s after re-admission: not long enough
    assert up.ejections == 2
    POLICY.succeeded(up, 25.0)  # 10 s after: forgiven
    assert up.ejections == 0 and not up.needs_reset
    while not POLICY.failed(up, 30.0):
        pass
    assert up.ejected_until == 35.0


def test_a_failed_connect_ejects_at_once_by_default_and_after_n_when_configured() -> None:
    up = upstream()
    assert POLICY.connect_failed(up, 0.0) and up.ejected_until == 5.0
    patient = OutlierPolicy(consecutive_connect_failures=3)
    other = upstream()
    assert not patient.connect_failed(other, 0.0)
    assert not patient.connect_failed(other, 0.0)
    assert patient.connect_failed(other, 0.0)


def test_failures_reported_while_ejected_do_not_extend_the_ejection() -> None:
    up = upstream()
    assert POLICY.connect_failed(up, 0.0)
    for _ in range(10):
        assert not POLICY.failed(up, 1.0)  # requests that were in flight report late
    assert up.ejected_until == 5.0 and up.ejections == 1


def test_slow_start_ramps_the_weight_from_the_floor() -> None:
    up = upstream()
    POLICY.start_ramp(up, 100.0)
    assert POLICY.weight_factor(up, 100.0) == pytest.approx(0.1)
    assert POLICY.weight_factor(up, 105.0) == pytest.approx(0.55)
    assert POLICY.weight_factor(up, 110.0) == 1.0
    assert OutlierPolicy(slow_start_seconds=0).weight_factor(up, 100.0) == 1.0


def shares(plan: RoutePlan, now: float, draws: int = 4000) -> Counter[str]:
    rand = random.Random(7).random
    counts: Counter[str] = Counter()
    for _ in range(draws):
        target = choose_target(plan, now, rand=rand, policy=POLICY)
        assert target is not None
        counts[target.id] += 1
    return counts


def test_a_new_backend_gets_a_small_share_that_grows_over_the_slow_start() -> None:
    metrics = GatewayMetrics()
    stats = metrics.stats_for("s", "1", "jakarta")
    old, new = upstream(), Upstream("127.1.1.2", 8000, clock=CoarseClock(0.0))
    POLICY.start_ramp(old, 0.0)
    POLICY.start_ramp(new, 100.0)  # added to the table at t=100
    targets = [
        Target(
            id=name, service="s", site="jakarta", version="1", weight=100, upstream=up, stats=stats
        )
        for name, up in (("old", old), ("new", new))
    ]
    plan = RoutePlan("s", targets, [], stats)
    at_start = shares(plan, 100.0)["new"] / 4000
    halfway = shares(plan, 105.0)["new"] / 4000
    after = shares(plan, 111.0)["new"] / 4000
    assert 0.05 < at_start < 0.14  # 10 / 110
    assert 0.30 < halfway < 0.41  # 55 / 155
    assert 0.45 < after < 0.55


def test_backend_answering_500s_is_ejected_through_the_proxy_and_comes_back_slowly() -> None:
    h = Harness(table(backend("a", A), backend("b", B)), outliers=POLICY)
    pool_a, pool_b = h.pools[A], h.pools[B]
    conn_a, up_a = h.idle(A)
    conn_b, up_b = h.idle(B)
    pool_b.ejected_until = h.clock.now + 1000  # steer every request to A for now
    client, downstream = h.client()
    for _ in range(5):
        client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        up_a.take()
        conn_a.data_received(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n")
        assert split(downstream.take())[0] == "HTTP/1.1 500 Internal Server Error"  # not retried
    assert pool_a.ejected_until == h.clock.now + 5
    assert h.metrics.ejections == {("accounts", "a"): 1}
    pool_b.ejected_until = 0
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert up_b.take().startswith(b"GET / ") and up_a.take() == b""
    conn_b.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    downstream.take()
    h.clock.now += 5.0  # re-admitted, slow started from the end of its ejection
    assert pool_a.ramp_start == h.clock.now
    assert POLICY.weight_factor(pool_a, h.clock.now) == pytest.approx(0.1)


def test_connect_failure_ejects_at_once_and_the_request_is_retried() -> None:
    h = Harness(table(backend("a", A), backend("b", B)), outliers=POLICY)
    conn_b, up_b = h.idle(B)
    h.pools[B].ejected_until = h.clock.now + 1
    client, downstream = h.client()
    client.data_received(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
    h.pools[B].ejected_until = 0
    client.connected(h.pools[A].pending.pop(), None)
    assert h.pools[A].ejected_until == h.clock.now + 5
    assert up_b.take().startswith(b"POST /pay")
    conn_b.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"


def test_everything_down_is_503() -> None:
    h = Harness(table(backend("a", A)), outliers=POLICY)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.connected(h.pools[A].pending.pop(), None)
    client.connected(h.pools[A].pending.pop(), None)  # the one retry, on the same one
    assert error_of(downstream.take())[0] == 503


def test_a_connection_closed_before_it_is_handed_over_counts_as_a_failed_connect() -> None:
    """The backend died between the connect and our callback: the exchange must hear of a
    failed connect (retried anywhere, nothing was sent), never get a closed connection
    (a write on it raised inside the event loop and stranded the client; CI caught it)."""
    import asyncio
    from types import SimpleNamespace

    from alwayson.gateway.relaying import UpstreamConnection

    async def go() -> list[object]:
        pool = upstream()
        heard: list[object] = []
        exchange = SimpleNamespace(owner=SimpleNamespace(connected=lambda _e, c: heard.append(c)))
        dead = UpstreamConnection(pool)
        dead.closed = True

        async def opened() -> UpstreamConnection:
            return dead

        task = asyncio.get_running_loop().create_task(opened())
        await task
        pool._opened(exchange, task)  # type: ignore[arg-type]
        alive = UpstreamConnection(pool)
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0, alive))
        await task
        pool._opened(exchange, task)  # type: ignore[arg-type]
        return heard

    assert asyncio.run(go()) == [None, ANY_CONNECTION]


class _AnyConnection:
    def __eq__(self, other: object) -> bool:
        from alwayson.gateway.relaying import UpstreamConnection

        return isinstance(other, UpstreamConnection) and not other.closed


ANY_CONNECTION = _AnyConnection()
