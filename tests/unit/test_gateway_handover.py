"""The listening-socket handover protocol in one process: real sockets on loopback and a
real Unix socket, the successor's side run in a thread (it is blocking by design)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from alwayson.gateway.handover import READY, HandoverOffer, take_over


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    """A data listener and an admin listener, as a running gateway has them."""
    made = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        made.append(sock)
    yield made
    for sock in made:
        sock.close()


class Events:
    def __init__(self) -> None:
        self.prepared = 0
        self.resumed = 0
        self.handed_over = asyncio.Event()

    async def prepare(self) -> None:
        self.prepared += 1

    def resume(self) -> None:
        self.resumed += 1


def offer_for(path: Path, socks: list[socket.socket], events: Events) -> HandoverOffer:
    return HandoverOffer(
        path,
        listeners=lambda: [sock.fileno() for sock in socks],
        prepare=events.prepare,
        resume=events.resume,
        handed_over=events.handed_over.set,
    )


def address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


async def test_successor_gets_the_same_listening_sockets(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    path = tmp_path / "gw.sock"
    path.write_text("stale")  # a leftover file is replaced
    events = Events()
    offer = offer_for(path, listeners, events)
    await offer.start()
    try:
        data, admin = (address(sock) for sock in listeners)
        taken = await asyncio.to_thread(take_over, path, [data], admin)
        assert taken is not None
        assert address(taken.listeners[0]) == data and address(taken.admin) == admin
        # the received socket is the same kernel socket: a connection queued on it is there
        client = socket.create_connection(data)
        accepted, _ = taken.listeners[0].accept()
        accepted.close()
        client.close()
        assert not events.handed_over.is_set()
        await asyncio.to_thread(taken.confirm)
        async with asyncio.timeout(5):
            await events.handed_over.wait()
        assert (events.prepared, events.resumed) == (1, 0)
        for sock in (*taken.listeners, taken.admin):
            sock.close()
    finally:
        await offer.aclose()
    assert path.exists()  # after a handover the path is the successor's to replace


async def test_sockets_of_other_addresses_are_refused_and_the_offer_stands(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    path = tmp_path / "gw.sock"
    events = Events()
    offer = offer_for(path, listeners, events)
    await offer.start()
    try:
        data, admin = (address(sock) for sock in listeners)
        other = ("127.0.0.1", data[1] + 1 if data[1] < 65535 else 1024)
        assert await asyncio.to_thread(take_over, path, [other], admin) is None
        assert await asyncio.to_thread(take_over, path, [data, data], admin) is None
        async with asyncio.timeout(5):
            while events.resumed < 2:
                await asyncio.sleep(0.01)
        # still offering: a matching successor takes them now
        taken = await asyncio.to_thread(take_over, path, [data], admin)
        assert taken is not None
        await asyncio.to_thread(taken.confirm)
        async with asyncio.timeout(5):
            await events.handed_over.wait()
        for sock in (*taken.listeners, taken.admin):
            sock.close()
    finally:
        await offer.aclose()


async def test_a_successor_that_dies_before_ready_leaves_the_gateway_serving(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    path = tmp_path / "gw.sock"
    events = Events()
    offer = offer_for(path, listeners, events)
    await offer.start()

    def connect_and_vanish() -> int:
        with socket.socket(socket.AF_UNIX) as channel:
            channel.settimeout(5)
            channel.connect(str(path))
            _, fds, _, _ = socket.recv_fds(channel, 256, 8)
            for fd in fds:
                socket.socket(fileno=fd).close()
            channel.sendall(b"not ready\n")
            return len(fds)

    try:
        assert await asyncio.to_thread(connect_and_vanish) == 2
        async with asyncio.timeout(5):
            while events.resumed < 1:
                await asyncio.sleep(0.01)
        assert not events.handed_over.is_set()
        assert listeners[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        await offer.aclose()
    assert not path.exists()  # a gateway that stops without a successor cleans up


def test_nothing_to_take_over_means_binding(tmp_path: Path) -> None:
    assert take_over(tmp_path / "missing.sock", [("127.0.0.1", 1)], ("127.0.0.1", 2)) is None
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # a file nobody listens on any more
    assert take_over(stale, [("127.0.0.1", 1)], ("127.0.0.1", 2), timeout=1) is None


def test_ready_is_one_line() -> None:
    assert READY == b"ready\n"
