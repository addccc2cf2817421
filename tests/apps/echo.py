"""A small HTTP service for tests: answers every path with JSON naming its instance.

Honours HOST and PORT like every alwayson workload. Behaviour switches (env):
/metrics answers Prometheus text (echo_requests_total) and is not counted.
ECHO_FAIL_START=1 exits at once with code 3; ECHO_NEVER_READY=1 answers /healthz with 503;
a file named sick-<instance> in the working directory makes /healthz answer 503 too.
Flags: ``--fail-rate F`` answers that share of requests (not /healthz) with 500, exactly
(every request where floor(n*F) grows); ``--delay S`` delays each request S seconds;
``--exit N`` exits at once with code N.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

BUSY: set[asyncio.Task[None] | None] = set()
SERVED = [0]
FAIL_RATE = 0.0
DELAY = 0.0


def _flags(argv: list[str]) -> tuple[float, float]:
    """``--fail-rate F``: that share of requests answer 500; ``--delay S``: each waits S."""
    fail_rate, delay = 0.0, 0.0
    for flag, value in zip(argv[::2], argv[1::2], strict=False):
        if flag == "--fail-rate":
            fail_rate = float(value)
        elif flag == "--delay":
            delay = float(value)
        elif flag == "--exit":
            print(f"echo: exiting with {value} on purpose (--exit)", flush=True)
            sys.exit(int(value))
        else:
            sys.exit(f"echo: unknown flag {flag}")
    return fail_rate, delay


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    me = asyncio.current_task()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            BUSY.add(me)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            seen: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                seen[name.strip().lower()] = value.strip()
                if name.lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            status = 200
            if path == "/metrics":  # Prometheus text, like a real service; not counted
                text = (
                    f"# TYPE echo_requests_total counter\necho_requests_total {SERVED[0]}\n"
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    + f"Content-Length: {len(text)}\r\n\r\n".encode()
                    + text
                )
                await writer.drain()
                BUSY.discard(me)
                continue
            if not path.startswith("/healthz"):
                SERVED[0] += 1
                if DELAY:
                    await asyncio.sleep(DELAY)
                if FAIL_RATE and int(SERVED[0] * FAIL_RATE) > int((SERVED[0] - 1) * FAIL_RATE):
                    status = 500
            sick = f"sick-{os.environ.get('ALWAYSON_INSTANCE', '')}"
            if path.startswith("/healthz") and (
                os.environ.get("ECHO_NEVER_READY") or os.path.exists(sick)
            ):
                status = 503
            payload = json.dumps(
                {
                    "instance": os.environ.get("ALWAYSON_INSTANCE", "?"),
                    "site": os.environ.get("ALWAYSON_SITE", "?"),
                    "version": os.environ.get("ALWAYSON_VERSION", "?"),
                    "method": method,
                    "path": path,
                    "body_bytes": len(body),
                    "request_id": seen.get("x-request-id"),
                    "forwarded_for": seen.get("x-forwarded-for"),
                }
            ).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            BUSY.discard(me)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    global FAIL_RATE, DELAY
    FAIL_RATE, DELAY = _flags(sys.argv[1:])
    if os.environ.get("ECHO_FAIL_START"):
        print("echo: failing on purpose (ECHO_FAIL_START)", flush=True)
        sys.exit(3)
    server = await asyncio.start_server(
        handle, os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"echo listening on {os.environ.get('HOST')}:{os.environ.get('PORT')}", flush=True)
    async with server:
        await stop.wait()
        server.close()
        # Drain: let requests in progress finish (bounded), then exit.
        for _ in range(100):
            if not BUSY:
                break
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
