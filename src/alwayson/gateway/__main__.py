"""``python -m alwayson.gateway``: one gateway process (a site's gateway or the front door)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alwayson.gateway.serving import GatewayConfig, run
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
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="standalone mode: one catch-all route to these backends (repeatable)",
    )
    parser.add_argument("--upstream-timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--connect-timeout", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--eject-seconds", type=float, default=5.0, metavar="SECONDS")
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
        upstreams=tuple(args.upstream),
        reuse_port=args.reuse_port,
        upstream_timeout=args.upstream_timeout,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        eject_seconds=args.eject_seconds,
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
