"""Incremental HTTP/1.1 request parsing: ``httptools`` when installed, else pure Python.

Both parsers turn bytes from a connection into :class:`ParsedRequest` objects, in order,
and raise :class:`ParseError` (with the HTTP status to answer) on malformed input.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024

try:  # pragma: no cover - depends on the environment
    import httptools

    HAVE_HTTPTOOLS = True
except ImportError:  # pragma: no cover
    HAVE_HTTPTOOLS = False


class ParseError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ParsedRequest:
    __slots__ = ("body", "headers", "keep_alive", "method", "target", "version")

    def __init__(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
        version: str,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.version = version


OnRequest = Callable[[ParsedRequest], None]
OnContinue = Callable[[], None]


def _add_header(headers: dict[str, str], name: str, value: str) -> None:
    if name in headers:
        headers[name] = f"{headers[name]}, {value}"
    else:
        headers[name] = value


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "1.0":
        return "keep-alive" in connection
    return "close" not in connection


class HttptoolsParser:
    """Adapter over ``httptools.HttpRequestParser`` (the parser uvicorn uses)."""

    def __init__(self, on_request: OnRequest, on_continue: OnContinue) -> None:
        self._on_request = on_request
        self._on_continue = on_continue
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise ParseError(400, "protocol upgrades are not supported") from exc
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, ParseError):  # raised by one of our callbacks
                raise exc.__context__ from None
            raise ParseError(400, f"malformed request: {exc}") from exc

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = []
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        _add_header(self._headers, name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "0")
        if length.isdigit() and int(length) > MAX_BODY:
            raise ParseError(413, f"body larger than {MAX_BODY} bytes")
        if self._headers.get("expect", "").lower() == "100-continue":
            self._on_continue()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            raise ParseError(413, f"body larger than {MAX_BODY} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        request = ParsedRequest(
            method=parser.get_method().decode("ascii"),
            target=b"".join(self._url).decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            keep_alive=parser.should_keep_alive(),
            version=parser.get_http_version(),
        )
        self._on_request(request)


class PureParser:
    """A small HTTP/1.1 request parser: Content-Length and chunked bodies, pipelining."""

    def __init__(self, on_request: OnRequest, on_continue: OnContinue) -> None:
        self._on_request = on_request
        self._on_continue = on_continue
        self._buffer = bytearray()
        self._head: tuple[str, str, str, dict[str, str]] | None = None
        self._length = 0
        self._chunked = False
        self._chunks: list[bytes] = []
        self._chunk_size = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self._head is None:
            return self._read_head()
        if self._chunked:
            return self._read_chunk()
        if len(self._buffer) < self._length:
            return False
        body = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._finish(body)
        return True

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise ParseError(431, "request head too large")
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        while lines and not lines[0]:  # tolerate stray CRLF between requests
            lines.pop(0)
        if not lines:
            return True
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ParseError(400, f"bad request line {lines[0][:80]!r}")
        method, target, proto = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ParseError(400, f"bad header line {line[:80]!r}")
            _add_header(headers, name.lower(), value.strip())
        self._head = (method, target, proto[5:], headers)
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._chunks = []
        self._chunk_size = -1
        if not self._chunked:
            length = headers.get("content-length", "0")
            if not length.isdigit():
                raise ParseError(400, f"bad content-length {length!r}")
            self._length = int(length)
            if self._length > MAX_BODY:
                raise ParseError(413, f"body larger than {MAX_BODY} bytes")
        if headers.get("expect", "").lower() == "100-continue":
            self._on_continue()
        return True

    def _read_chunk(self) -> bool:
        if self._chunk_size < 0:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return False
            size_text = bytes(self._buffer[:end]).split(b";")[0].strip()
            try:
                self._chunk_size = int(size_text, 16)
            except ValueError as exc:
                raise ParseError(400, "bad chunk size") from exc
            del self._buffer[: end + 2]
            if sum(map(len, self._chunks)) + self._chunk_size > MAX_BODY:
                raise ParseError(413, f"body larger than {MAX_BODY} bytes")
        if self._chunk_size == 0:  # last chunk: skip trailers up to the empty line
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return False
            del self._buffer[: end + 2]
            if end == 0:
                self._finish(b"".join(self._chunks))
            return True
        if len(self._buffer) < self._chunk_size + 2:
            return False
        self._chunks.append(bytes(self._buffer[: self._chunk_size]))
        del self._buffer[: self._chunk_size + 2]
        self._chunk_size = -1
        return True

    def _finish(self, body: bytes) -> None:
        assert self._head is not None
        method, target, version, headers = self._head
        self._head = None
        self._chunked = False
        self._length = 0
        self._on_request(
            ParsedRequest(method, target, headers, body, _keep_alive(version, headers), version)
        )


Parser = HttptoolsParser | PureParser


def make_parser(on_request: OnRequest, on_continue: OnContinue, *, pure: bool = False) -> Parser:
    if HAVE_HTTPTOOLS and not pure:
        return HttptoolsParser(on_request, on_continue)
    return PureParser(on_request, on_continue)
