"""``split_hostport``: the host:port addresses of the spec (front door, API, proxies)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.util.addresses import is_loopback, split_hostport


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("127.1.0.1:1", ("127.1.0.1", 1)),
        ("10.0.0.5:65535", ("10.0.0.5", 65535)),
        (":9000", ("127.0.0.1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
        ("  127.0.0.1:7070  ", ("127.0.0.1", 7070)),
        ("http://127.0.0.1:7070", ("127.0.0.1", 7070)),
        ("http://127.0.0.1:7070/", ("127.0.0.1", 7070)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_split(text: str, expected: tuple[str, int]) -> None:
    assert split_hostport(text) == expected


def test_default_port_when_none_is_written() -> None:
    assert split_hostport("127.0.0.1", default_port=8080) == ("127.0.0.1", 8080)


def test_port_is_required_without_a_default() -> None:
    with pytest.raises(ValueError, match=r"'127\.0\.0\.1' needs a port, like 127\.0\.0\.1:8080"):
        split_hostport("127.0.0.1")


@pytest.mark.parametrize("text", ["127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "h:-1", "h:"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        split_hostport(text)


@given(st.integers(1, 65535), st.sampled_from(["127.0.0.1", "127.1.2.3", "10.0.0.1"]))
def test_round_trip(port: int, host: str) -> None:
    assert split_hostport(f"{host}:{port}") == (host, port)


@pytest.mark.parametrize("text", ["0", "70000"])
def test_bare_port_is_range_checked_too(text: str) -> None:
    with pytest.raises(ValueError):
        split_hostport(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
