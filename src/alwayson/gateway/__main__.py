"""``python -m alwayson.gateway``: one gateway process (a site's gateway or the front door)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alwayson.gateway.serving import run
from alwayson.gateway.settings import GatewayConfig
from alwayson.util.errors import AlwaysonError


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(
        prog="python -m alwayson.gateway",
        description="The alwayson data-plane gateway: an HTTP/1.1 reverse proxy.",
    )
    parser.add_argument(
        "--listen", action="append", required=True, metavar="HOST:PORT", help="repeatable"
    )
    parser.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
    parser.add_argument("--admin", required=True, metavar="HOST:PORT")
    parser.add_argument("--site", required=True)
    parser.add_argument("--routes-file", type=Path, metavar="PATH")
    parser.add_argument("--token-file", type=Path, metavar="PATH")
    parser.add_argument(
        "--partitions",
        type=Path,
        metavar="PATH",
        help="the site links' state (data/partitions.json): backends in sites cut off from "
        "this one are not used; re-read every 0.1 s, a missing file cuts nothing",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="standalone mode: one catch-all route to these backends (repeatable)",
    )
    parser.add_argument(
        "--handover",
        type=Path,
        metavar="PATH",
        help="once serving, offer the listening sockets to a successor on this Unix socket",
    )
    parser.add_argument(
        "--takeover",
        type=Path,
        metavar="PATH",
        help="take the listening sockets from the gateway offering them here (else bind)",
    )
    seconds = {"type": float, "metavar": "SECONDS"}
    parser.add_argument("--upstream-timeout", default=30.0, **seconds)  # type: ignore[arg-type]
    parser.add_argument("--connect-timeout", default=3.0, **seconds)  # type: ignore[arg-type]
    parser.add_argument("--drain-timeout", default=10.0, **seconds)  # type: ignore[arg-type]
    parser.add_argument(
        "--drain-grace",
        default=1.0,
        help="while draining, close keep-alive connections idle this long",
        **seconds,  # type: ignore[arg-type]
    )
    parser.add_argument("--header-timeout", default=10.0, **seconds)  # type: ignore[arg-type]
    parser.add_argument("--idle-timeout", default=60.0, **seconds)  # type: ignore[arg-type]
    parser.add_argument(
        "--eject-seconds",
        default=5.0,
        help="first ejection of a failing backend; each one in a row doubles it",
        **seconds,  # type: ignore[arg-type]
    )
    parser.add_argument(
        "--max-eject-seconds",
        default=300.0,
        help="the longest ejection, however many in a row",
        **seconds,  # type: ignore[arg-type]
    )
    parser.add_argument("--eject-after-5xx", type=int, default=5, metavar="N")
    parser.add_argument("--eject-after-connect-failures", type=int, default=1, metavar="N")
    parser.add_argument("--slow-start", default=10.0, **seconds)  # type: ignore[arg-type]
    parser.add_argument("--max-connections", type=int, default=10_000, metavar="N")
    parser.add_argument("--max-header-bytes", type=int, default=32 * 1024, metavar="BYTES")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=10 * 1024 * 1024,
        metavar="BYTES",
        help="for routes without their own max_body_bytes",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s gateway[{args.site}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return GatewayConfig(
        listen=tuple(args.listen),
        admin=args.admin,
        site=args.site,
        routes_file=args.routes_file,
        token_file=args.token_file,
        partitions_file=args.partitions,
        upstreams=tuple(args.upstream),
        reuse_port=args.reuse_port,
        handover=args.handover,
        takeover=args.takeover,
        upstream_timeout=args.upstream_timeout,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        drain_grace=args.drain_grace,
        header_timeout=args.header_timeout,
        client_idle_timeout=args.idle_timeout,
        eject_seconds=args.eject_seconds,
        max_eject_seconds=args.max_eject_seconds,
        eject_after_5xx=args.eject_after_5xx,
        eject_after_connect_failures=args.eject_after_connect_failures,
        slow_start_seconds=args.slow_start,
        max_connections=args.max_connections,
        max_header_bytes=args.max_header_bytes,
        max_body_bytes=args.max_body_bytes,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        run(config)
    except AlwaysonError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
