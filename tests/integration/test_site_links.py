"""The site links on real sockets: a slowed link delays (in order) and paces what a relay
carries, on open and new connections, until the slowness is removed; a real gateway
process stops using another site's backends while the partitions file cuts that site
off, and uses them again once it heals, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alwayson.data.links import Relay, Target, sweep_forever
from alwayson.util.sitelinks import Partitions, Slowness, write_partitions

try:
    from test_gateway_support import (
        Processes,
        backend_entry,
        free_port,
        http,
        processes,
        route_table,
        start_gateway,
        start_upstream,
        wait_until,
        write_table,
    )
except ImportError:  # collected as part of a package
    from .test_gateway_support import (
        Processes,
        backend_entry,
        free_port,
        http,
        processes,
        route_table,
        start_gateway,
        start_upstream,
        wait_until,
        write_table,
    )

WEST = "127.1.0.77"  # the relay's site
EAST = "127.2.0.77"  # the echo server's site
DELAY = 0.05


# -- a relay between two sites, to a TCP echo server --------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@dataclass
class Link:
    path: Path
    relays: list[Relay]

    @property
    def listen(self) -> tuple[str, int]:
        host, port = self.relays[0].listen.rsplit(":", 1)
        return host, int(port)

    def slow(self, *slowness: Slowness) -> None:
        write_partitions(self.path, slow=slowness)

    async def in_force(self) -> bool:
        """The sweep read the file, and in the same step slowed every open pipe (a pipe
        connected later is slowed as it connects)."""
        return self.relays[-1].partitions.slowness("west", "east") is not None

    async def connect(self) -> Connection:
        reader, writer = await asyncio.open_connection(*self.listen)
        return Connection(reader, writer)


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def rtt(self) -> float:
        started = time.monotonic()
        self.writer.write(b"ping\n")
        assert await asyncio.wait_for(self.reader.readexactly(5), 5.0) == b"ping\n"
        return time.monotonic() - started

    async def median_rtt(self, samples: int = 7) -> float:
        return statistics.median([await self.rtt() for _ in range(samples)])

    def close(self) -> None:
        self.writer.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def site_link(tmp_path: Path, chained: bool = False) -> AsyncIterator[Link]:
    """A relay in ``west`` to an echo server in ``east`` (with ``chained``, an endpoint
    relay in front of it, as a site agent has), swept like the agent sweeps them."""
    path = tmp_path / "data" / "partitions.json"
    partitions = Partitions(path)
    echo = await asyncio.start_server(_echo, EAST, 0)
    echo_port = echo.sockets[0].getsockname()[1]
    link = Relay(
        "link→east",
        "west",
        f"{WEST}:{free_port(WEST)}",
        lambda: Target(f"{EAST}:{echo_port}", "east"),
        partitions,
    )
    relays = [link]
    if chained:
        endpoint_target = Target(link.listen, "east")
        relays.insert(
            0,
            Relay(
                "endpoint", "west", f"{WEST}:{free_port(WEST)}", lambda: endpoint_target, partitions
            ),
        )
    sweeper: asyncio.Task[None] | None = None
    try:
        for relay in relays:
            await relay.start()
        sweeper = asyncio.create_task(sweep_forever(relays, partitions))
        yield Link(path, relays)
    finally:
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        for relay in relays:
            await relay.close()
        echo.close()
        await echo.wait_closed()


async def test_a_slowed_link_delays_open_and_new_connections_until_it_heals(
    tmp_path: Path,
) -> None:
    async with site_link(tmp_path) as link:
        old = await link.connect()
        try:
            before = await old.median_rtt()

            link.slow(Slowness(("east", "west"), DELAY))

            async def slowed() -> bool:
                return await old.rtt() >= 2 * DELAY

            await until(slowed, "the open connection slowed")
            new = await link.connect()
            try:
                slow_old, slow_new = await old.median_rtt(), await new.median_rtt()
            finally:
                new.close()
            assert slow_old >= 2 * DELAY and slow_new >= 2 * DELAY

            link.slow()

            async def healed() -> bool:
                return await old.rtt() < DELAY

            await until(healed, "the open connection fast again")
            after = await old.median_rtt()
            assert after < DELAY
        finally:
            old.close()
    print(
        f"round trip through the link: {before * 1000:.2f} ms; with {DELAY * 1000:.0f} ms each "
        f"way: {slow_old * 1000:.1f} ms (open connection), {slow_new * 1000:.1f} ms (new); "
        f"healed: {after * 1000:.2f} ms"
    )


async def test_jitter_never_reorders_the_bytes(tmp_path: Path) -> None:
    async with site_link(tmp_path) as link:
        link.slow(Slowness(("west", "east"), delay=0.005, jitter=0.03))
        await until(link.in_force, "the slowness in force")
        conn = await link.connect()
        try:
            sent = b"".join(b"%05d;" % n for n in range(300))
            reading = asyncio.create_task(conn.reader.readexactly(len(sent)))
            for n in range(300):
                conn.writer.write(b"%05d;" % n)
                await conn.writer.drain()
                await asyncio.sleep(0.001)  # separate reads at the relay, each its own jitter
            received = await asyncio.wait_for(reading, 10.0)
        finally:
            conn.close()
    assert received == sent


async def test_a_rate_bounds_the_throughput(tmp_path: Path) -> None:
    rate = 200_000
    size = 300_000
    async with site_link(tmp_path) as link:
        link.slow(Slowness(("west", "east"), delay=0.0, rate=rate))
        await until(link.in_force, "the rate in force")
        conn = await link.connect()
        try:
            started = time.monotonic()
            reading = asyncio.create_task(conn.reader.readexactly(size))
            conn.writer.write(b"r" * size)
            await conn.writer.drain()
            await asyncio.wait_for(reading, 10.0)
            elapsed = time.monotonic() - started
        finally:
            conn.close()
    print(f"{size} bytes echoed at a {rate} B/s rate in {elapsed:.2f} s")
    assert elapsed >= 0.9 * size / rate


async def test_a_chained_relay_adds_the_delay_once(tmp_path: Path) -> None:
    """An endpoint whose target is the site link (a primary in the other site) is slowed
    by the link only, not once per relay."""
    delay = 0.1
    async with site_link(tmp_path, chained=True) as link:
        link.slow(Slowness(("west", "east"), delay))
        await until(link.in_force, "the slowness in force")
        conn = await link.connect()
        try:
            rtt = await conn.median_rtt(5)
        finally:
            conn.close()
    assert 2 * delay <= rtt < 3 * delay


# -- a gateway process and a cut ---------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[Processes]:
    with processes() as group:
        yield group


def test_a_gateway_stops_using_a_cut_off_site_and_resumes_when_it_heals(
    procs: Processes, tmp_path: Path
) -> None:
    _, remote_port = start_upstream(procs, "127.2.1.77", "accounts-surabaya-1", tmp_path)
    _, local_port = start_upstream(procs, "127.1.1.77", "loans-jakarta-1", tmp_path)
    accounts = backend_entry("accounts-surabaya-1", "127.2.1.77", remote_port, site="surabaya")
    loans = backend_entry("loans-jakarta-1", "127.1.1.77", local_port, site="jakarta")
    table = route_table(
        "jakarta",
        1,
        {"service": "accounts", "path_prefix": "/accounts", "backends": [accounts]},
        {"service": "loans", "path_prefix": "/loans", "backends": [loans]},
    )
    routes = write_table(tmp_path / "routes.json", table)
    cuts = tmp_path / "data" / "partitions.json"  # no file yet: nothing cut
    gateway = start_gateway(
        procs, tmp_path, extra=["--routes-file", str(routes), "--partitions", str(cuts)]
    )

    def status(path: str) -> int:
        return http("GET", gateway.url + path)[0]

    assert status("/accounts/1") == 200 and status("/loans/1") == 200

    write_partitions(cuts, [("surabaya", "jakarta")])
    cut_at = time.monotonic()
    wait_until(lambda: status("/accounts/1") == 503, timeout=5, what="503 while cut")
    seen_cut = time.monotonic() - cut_at
    code, _, body = http("GET", gateway.url + "/accounts/2")
    assert code == 503 and b"no usable backend" in body
    assert status("/loans/1") == 200  # its own site still serves

    write_partitions(cuts, slow=[Slowness(("surabaya", "jakarta"), 0.05)])  # slow, not cut
    healed_at = time.monotonic()
    wait_until(lambda: status("/accounts/1") == 200, timeout=5, what="200 after the heal")
    seen_heal = time.monotonic() - healed_at
    assert gateway.process.poll() is None  # the same process throughout
    log = gateway.log.read_text()
    assert "cut off from surabaya" in log and "reaches every site again" in log
    print(f"gateway saw the cut after {seen_cut:.3f} s and the heal after {seen_heal:.3f} s")
