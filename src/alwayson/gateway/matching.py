"""Finding the route of a request: precomputed once per table, a few dict and prefix checks
per request, no regular expressions.

Precedence, most specific first:

1. routes with hosts and a path prefix (longest prefix first),
2. routes with a path prefix only (longest prefix first),
3. routes with hosts only,
4. a route with neither (a catch-all, like the front door's).

A prefix matches at a segment boundary: ``/accounts`` matches ``/accounts``,
``/accounts/1`` and ``/accounts?x`` but not ``/accountsx``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from httptools import parse_url

T = TypeVar("T")

# (prefix, prefix + "/", prefix + "?", value); the prefix has no trailing slash, so the
# root prefix "/" becomes b"" and its b"/" form matches every origin-form path.
_Rule = tuple[bytes, bytes, bytes, T]


def normalize_host(raw: bytes) -> bytes:
    """The Host header without its port, lower-cased (``[::1]:80`` → ``[::1]``)."""
    if raw.startswith(b"["):
        end = raw.find(b"]")
        return raw[: end + 1].lower() if end > 0 else raw.lower()
    colon = raw.find(b":")
    if colon >= 0:
        raw = raw[:colon]
    return raw.lower()


def request_path(target: bytes) -> bytes:
    """The path (with query) of a request target; absolute-form targets are reduced."""
    if target.startswith(b"/"):
        return target
    if target == b"*":
        return target
    try:
        url = parse_url(target)
    except Exception:  # httptools raises its own HttpParserInvalidURLError
        return target
    path = url.path or b"/"
    return path + b"?" + url.query if url.query else path


def _rule(prefix: str, value: T) -> _Rule[T]:
    base = prefix.rstrip("/").encode()
    return (base, base + b"/", base + b"?", value)


class RouteMatcher(Generic[T]):
    """Maps (host, path) to the value of the most specific route."""

    __slots__ = ("_catch_all", "_host_only", "_host_path", "_path_only", "size", "uses_hosts")

    def __init__(self, entries: Iterable[tuple[Sequence[str], str | None, T]]) -> None:
        host_path: dict[bytes, list[_Rule[T]]] = {}
        path_only: list[_Rule[T]] = []
        self._host_only: dict[bytes, T] = {}
        self._catch_all: T | None = None
        self.size = 0  # routes, so "no table yet" can be told from "no match"
        for hosts, prefix, value in entries:
            self.size += 1
            if hosts and prefix is not None:
                for host in hosts:
                    host_path.setdefault(host.lower().encode(), []).append(_rule(prefix, value))
            elif prefix is not None:
                path_only.append(_rule(prefix, value))
            elif hosts:
                for host in hosts:
                    self._host_only.setdefault(host.lower().encode(), value)
            elif self._catch_all is None:
                self._catch_all = value
        for rules in host_path.values():
            rules.sort(key=lambda rule: len(rule[0]), reverse=True)
        path_only.sort(key=lambda rule: len(rule[0]), reverse=True)
        self._host_path = host_path
        self._path_only = path_only
        # No route names a host: callers may skip working out the request's host.
        self.uses_hosts = bool(host_path or self._host_only)

    def match(self, host: bytes, path: bytes) -> T | None:
        """``host`` as given by :func:`normalize_host`; ``path`` with its query."""
        if self._host_path:
            rules = self._host_path.get(host)
            if rules is not None:
                for prefix, with_slash, with_query, value in rules:
                    if path.startswith(with_slash) or path == prefix or path.startswith(with_query):
                        return value
        for prefix, with_slash, with_query, value in self._path_only:
            if path.startswith(with_slash) or path == prefix or path.startswith(with_query):
                return value
        if self._host_only:
            found = self._host_only.get(host)
            if found is not None:
                return found
        return self._catch_all
