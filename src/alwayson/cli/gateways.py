"""``alwayson gateway``: run the data plane by hand (benchmarks, trials)."""

from __future__ import annotations

from pathlib import Path

import typer

from alwayson.gateway.serving import GatewayConfig, run
from alwayson.util.errors import AlwaysonError

app = typer.Typer(help="The gateway (data plane) on its own.", no_args_is_help=True)


@app.command()
def serve(
    listen: list[str] = typer.Option(
        ["127.0.0.1:8080"], "--listen", help="Address to accept clients on (repeatable)."
    ),
    upstream: list[str] = typer.Option(
        [], "--upstream", help="Backend URL, e.g. http://127.0.0.1:9000 (repeatable)."
    ),
    admin: str = typer.Option("127.0.0.1:9901", help="Admin address: /metrics, /healthz, /routes."),
    site: str = typer.Option("standalone", help="Site name for locality and metrics."),
    routes_file: Path | None = typer.Option(None, help="Routing table JSON to load (and keep)."),
    token_file: Path | None = typer.Option(None, help="Bearer token that PUT /routes requires."),
    reuse_port: bool = typer.Option(False, help="SO_REUSEPORT: share the address with peers."),
) -> None:
    """Proxy `--listen` to the `--upstream` backends (one catch-all route), until Ctrl-C.

    Example: `alwayson gateway serve --listen 127.0.0.1:8080 --upstream http://127.0.0.1:9000`
    """
    if not upstream and routes_file is None:
        typer.echo("give at least one --upstream URL or a --routes-file", err=True)
        raise typer.Exit(2)
    try:
        config = GatewayConfig(
            listen=tuple(listen),
            admin=admin,
            site=site,
            routes_file=routes_file,
            token_file=token_file,
            upstreams=tuple(upstream),
            reuse_port=reuse_port,
        )
    except AlwaysonError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    run(config)
