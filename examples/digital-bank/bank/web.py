"""A tiny web framework: routing by method and path pattern, JSON in and out, errors, metrics.

Each service builds one :class:`App`, registers handlers with ``@app.get("/x/{id}")`` and
friends, and calls :func:`bank.server.run`. Every app also answers ``GET /`` (what it is),
``GET /healthz`` and ``GET /metrics`` (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bank.metrics import Metrics
from bank.parser import ParsedRequest

if TYPE_CHECKING:
    from fractions import Fraction

REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    423: "Locked",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
IDEMPOTENCY_CACHE = 10_000
# Never slowed down or failed by --delay / --fail-rate: probes and scrapes must see the truth.
UNFAULTED = frozenset({"/", "/healthz", "/metrics"})


class HTTPError(Exception):
    """Raise from a handler to answer ``status`` with ``{"error": message, **details}``."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body, "application/json", headers)


def text_response(text: str, status: int = 200, content_type: str = "text/plain") -> Response:
    return Response(status, text.encode(), f"{content_type}; charset=utf-8")


def unquote(text: str, plus: bool = True) -> str:
    """Percent-decode ``text`` (and ``+`` as space in query strings)."""
    if plus:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    head, *rest = text.split("%")
    out = bytearray(head.encode())
    for part in rest:
        try:
            out.append(int(part[:2], 16))
            out += part[2:].encode()
        except ValueError:
            out += b"%" + part.encode()
    return out.decode("utf-8", "replace")


class Request:
    __slots__ = ("_query", "app", "body", "headers", "method", "params", "path", "query_string")

    def __init__(self, app: App, method: str, target: str, headers: dict[str, str], body: bytes):
        self.app = app
        self.method = method
        self.path, _, self.query_string = target.partition("?")
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = {}
            for pair in self.query_string.split("&"):
                if pair:
                    name, _, value = pair.partition("=")
                    self._query[unquote(name)] = unquote(value)
        return self._query

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]

    def json(self) -> Any:
        if not self.body:
            raise HTTPError(400, "a JSON body is required")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"the body is not valid JSON: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return data


Handler = Callable[[Request], Awaitable[Response]]
Hook = Callable[[], Awaitable[None]]


class Route:
    __slots__ = ("handler", "idempotent", "method", "pattern", "segments")

    def __init__(self, method: str, pattern: str, handler: Handler, idempotent: bool) -> None:
        self.method = method
        self.pattern = pattern
        self.segments = tuple(pattern.strip("/").split("/"))
        self.handler = handler
        self.idempotent = idempotent

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, parts, strict=True):
            if want.startswith("{"):
                if not got:
                    return None
                params[want[1:-1]] = unquote(got, plus=False)
            elif want != got:
                return None
        return params


class App:
    """One micro-service: its routes, identity (from the environment) and metrics."""

    def __init__(self, service: str, description: str) -> None:
        env = os.environ
        self.service = service
        self.description = description
        self.version = env.get("ALWAYSON_VERSION", "dev")
        self.site = env.get("ALWAYSON_SITE", "local")
        self.instance = env.get("ALWAYSON_INSTANCE", f"{service}-local-1")
        self.gateway = env.get("ALWAYSON_GATEWAY", "")
        self.metrics = Metrics(service, self.version, self.site, self.instance)
        self.routes: list[Route] = []
        self.on_startup: list[Hook] = []  # run once listening; must not block for long
        self.on_shutdown: list[Hook] = []
        self.draining = False
        self.fail_rate: Fraction | int = 0  # --fail-rate: this share of requests answers 500
        self.delay = 0.0  # --delay: seconds each request waits before it is handled
        self.faulted = 0  # requests subject to the two above, so far
        self._idempotent: OrderedDict[tuple[str, str], tuple[bytes, Response | None]] = (
            OrderedDict()
        )
        self.get("/")(self._describe)
        self.get("/healthz")(self._healthz)
        self.get("/metrics")(self._metrics)
        if env.get("BANK_DEBUG") == "1":
            self.get("/_debug/sleep")(self._sleep)

    # registration
    def route(
        self, method: str, pattern: str, *, idempotent: bool = False
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method, pattern, handler, idempotent))
            return handler

        return register

    def get(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("GET", pattern)

    def post(self, pattern: str, *, idempotent: bool = False) -> Callable[[Handler], Handler]:
        return self.route("POST", pattern, idempotent=idempotent)

    def patch(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("PATCH", pattern)

    def delete(self, pattern: str) -> Callable[[Handler], Handler]:
        return self.route("DELETE", pattern)

    # dispatch
    async def handle(self, parsed: ParsedRequest) -> Response:
        started = time.perf_counter()
        headers = parsed.headers
        if "x-request-id" not in headers:
            headers["x-request-id"] = os.urandom(8).hex()
        method = "GET" if parsed.method == "HEAD" else parsed.method
        request = Request(self, method, parsed.target, headers, parsed.body)
        route_name = "unmatched"
        self.metrics.in_flight += 1
        try:
            route = self._find(request)
            route_name = route.pattern
            if (self.fail_rate or self.delay) and not (
                method == "GET" and route.pattern in UNFAULTED
            ):
                await self._inject_faults()
            if route.idempotent and "idempotency-key" in headers:
                response = await self._once(route, request)
            else:
                response = await route.handler(request)
        except HTTPError as exc:
            response = self.error(exc)
        except Exception as exc:
            self.log(f"error in {method} {request.path}: {exc!r}")
            import traceback

            traceback.print_exc(file=sys.stderr)
            response = self.error(HTTPError(500, "internal error", exception=type(exc).__name__))
        finally:
            self.metrics.in_flight -= 1
        response.headers["x-served-by"] = self.instance
        response.headers["x-request-id"] = headers["x-request-id"]
        elapsed = time.perf_counter() - started
        self.metrics.observe(method, route_name, response.status, elapsed)
        return response

    def inject_faults(self, fail_rate: Fraction | float = 0, delay: float = 0.0) -> None:
        """Make this a bad version for release drills (``--fail-rate``, ``--delay``).

        Every request that matches a route, except ``GET /``, ``/healthz`` and
        ``/metrics``, first waits ``delay`` seconds, then the ``n``-th of them answers 500
        when ``floor(n * fail_rate)`` goes up: exactly ``floor(N * fail_rate)`` of the
        first ``N`` fail, spread evenly, so tests can count them.
        """
        from fractions import Fraction  # only bad versions pay for the import

        rate = Fraction(fail_rate)
        if not 0 <= rate <= 1:
            raise ValueError(f"fail_rate must be between 0 and 1, not {fail_rate}")
        if not (delay >= 0 and math.isfinite(delay)):
            raise ValueError(f"delay must be a number of seconds, not {delay}")
        self.fail_rate = rate
        self.delay = delay

    async def _inject_faults(self) -> None:
        self.faulted += 1
        n = self.faulted
        if self.delay:
            await asyncio.sleep(self.delay)
        if math.floor(n * self.fail_rate) > math.floor((n - 1) * self.fail_rate):
            raise HTTPError(
                500, "injected failure", fail_rate=float(self.fail_rate), request_number=n
            )

    def _find(self, request: Request) -> Route:
        parts = request.path.strip("/").split("/")
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(parts)
            if params is None:
                continue
            if route.method == request.method:
                request.params = params
                return route
            allowed.append(route.method)
        if allowed:
            raise HTTPError(
                405, f"{request.method} is not allowed on {request.path}", allow=sorted(allowed)
            )
        raise HTTPError(404, f"no route for {request.method} {request.path}")

    async def _once(self, route: Route, request: Request) -> Response:
        """Run a POST at most once per ``Idempotency-Key`` (per instance, bounded memory)."""
        key = (route.pattern, request.headers["idempotency-key"])
        seen = self._idempotent.get(key)
        if seen is not None:
            body, previous = seen
            if body != request.body:
                raise HTTPError(422, "Idempotency-Key was already used with a different body")
            if previous is None:
                raise HTTPError(409, "a request with this Idempotency-Key is in progress")
            return Response(
                previous.status,
                previous.body,
                previous.content_type,
                {**previous.headers, "idempotent-replay": "true"},
            )
        self._idempotent[key] = (request.body, None)
        try:
            response = await route.handler(request)
        except HTTPError as exc:
            response = self.error(exc)
        except BaseException:
            del self._idempotent[key]
            raise
        if response.status >= 500:
            del self._idempotent[key]
        else:
            self._idempotent[key] = (request.body, response)
            while len(self._idempotent) > IDEMPOTENCY_CACHE:
                self._idempotent.popitem(last=False)
        return response

    def error(self, exc: HTTPError) -> Response:
        body = {"error": exc.message, **exc.details, "service": self.service}
        headers = {}
        if exc.status == 405 and "allow" in exc.details:
            headers["allow"] = ", ".join(exc.details["allow"])
        return json_response(body, exc.status, headers)

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        print(f"{stamp}Z {self.instance} {message}", file=sys.stderr, flush=True)

    # built-in endpoints
    def identity(self) -> dict[str, str]:
        return {
            "service": self.service,
            "version": self.version,
            "site": self.site,
            "instance": self.instance,
        }

    async def _describe(self, request: Request) -> Response:
        endpoints = [
            f"{r.method} {r.pattern}"
            for r in self.routes
            if r.pattern not in ("/", "/healthz", "/metrics") and not r.pattern.startswith("/_")
        ]
        about: dict[str, Any] = {
            **self.identity(),
            "description": self.description,
            "endpoints": endpoints,
        }
        if self.fail_rate or self.delay:
            about["faults"] = {"fail_rate": float(self.fail_rate), "delay_s": self.delay}
        return json_response(about)

    async def _healthz(self, request: Request) -> Response:
        status = "draining" if self.draining else "ok"
        uptime = round(time.time() - self.metrics.started, 3)
        body = {"status": status, **self.identity(), "uptime_s": uptime}
        return json_response(body, 503 if self.draining else 200)

    async def _metrics(self, request: Request) -> Response:
        return text_response(self.metrics.render(), content_type="text/plain; version=0.0.4")

    async def _sleep(self, request: Request) -> Response:
        try:
            seconds = min(max(float(request.query.get("s", "0.1")), 0.0), 30.0)
        except ValueError:
            raise HTTPError(400, "s: must be a number of seconds") from None
        await asyncio.sleep(seconds)
        return json_response({"slept": seconds})
