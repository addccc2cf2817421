"""What an iteration does: a plain list of requests, or a journey written in Python.

A journey is an async callable ``journey(session) -> None``. ``session.get/post/…`` sends
one request, records it under its step name (per-step latency, outcomes and error kinds)
and returns the response; a request that fails (a status it does not expect, by default
anything but 2xx, or a transport error) is recorded and raises ``StepFailed``, which ends
the iteration as failed. Exceptions the journey raises itself fail the iteration and are
counted by type in ``journey_errors``.

Latency of the first step runs from the iteration's intended start (as the whole
iteration's does), so a generator or server that delays the start shows up in it; later
steps run from their own start.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alwayson.loadgen.clients import ClientError, Response, Transport
from alwayson.loadgen.recording import Recorder
from alwayson.util.clocks import Clock


class StepFailed(Exception):
    """A request of the iteration failed; it is already recorded under its step."""

    def __init__(self, step: str, kind: str) -> None:
        super().__init__(f"{step}: {kind}")
        self.step = step
        self.kind = kind


class Session:
    """A journey's handle on the target: one shared client, every request recorded.

    Requests go through a ``Transport`` (the lean ``clients.HttpClient`` in a run); a
    response has ``status_code``, ``headers``, ``content``, ``text`` and ``json()``.
    """

    def __init__(
        self, client: Transport, recorder: Recorder, clock: Clock, intended: float
    ) -> None:
        self._client = client
        self._recorder = recorder
        self._clock = clock
        self._origin: float | None = intended  # the first step counts from here
        self.intended = intended  # when the iteration was meant to start (clock.monotonic)
        self.vars: dict[str, Any] = {}  # per-iteration scratch space for journeys

    async def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        expect: Collection[int] | None = None,
        content: bytes | None = None,
    ) -> Response:
        step = name or f"{method.upper()} {path}"
        started = self._clock.monotonic() if self._origin is None else self._origin
        self._origin = None
        try:
            response = await self._client.request(
                method, path, json=json, headers=headers, params=params, content=content
            )
        except ClientError as exc:
            kind = exc.kind
            self._recorder.step(step, started, self._clock.monotonic(), kind)
            raise StepFailed(step, kind) from exc
        done = self._clock.monotonic()
        good = response.status_code in expect if expect is not None else response.is_success
        if not good:
            kind = f"http {response.status_code}"
            self._recorder.step(step, started, done, kind)
            raise StepFailed(step, kind)
        self._recorder.step(step, started, done, None)
        return response

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Response:
        return await self.request("PUT", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)


Journey = Callable[[Session], Awaitable[None]]


@dataclass(frozen=True)
class Request:
    """One request of a URL list. ``path`` is relative to the test's base URL."""

    path: str = "/"
    method: str = "GET"
    json: Any = None
    name: str | None = None

    @property
    def step(self) -> str:
        return self.name or f"{self.method.upper()} {self.path}"


@dataclass
class UrlList:
    """Iterations take the requests in turn, one request per iteration."""

    requests: Sequence[Request]
    _turn: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("a URL list needs at least one request")

    async def __call__(self, session: Session) -> None:
        req = self.requests[next(self._turn) % len(self.requests)]
        await session.request(req.method, req.path, json=req.json, name=req.step)


Scenario = Journey  # a UrlList is a journey too
