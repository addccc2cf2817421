"""Host:port addresses on loopback."""

from __future__ import annotations

import ipaddress
import socket


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``host:port`` (or ``:port`` / ``port``) into a tuple."""
    text = text.strip()
    if text.startswith("http://"):
        text = text[len("http://") :].rstrip("/")
    if text.isdigit():
        if not 0 < int(text) < 65536:
            raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
        return "127.0.0.1", int(text)
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"{text!r} needs a port, like 127.0.0.1:8080")
        return text, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    return host or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (checked by binding without SO_REUSEPORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
