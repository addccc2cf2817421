"""``alwayson gateway``: restart the data plane without dropping a request, or run it by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from alwayson.api.tokens import read_token
from alwayson.util.errors import AlwaysonError, SpecError

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
    from alwayson.gateway.serving import GatewayConfig, run

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


@app.command()
def restart(
    site: str | None = typer.Option(None, "--site", help="Only this site (default: every site)."),
    file: Path = typer.Option(Path("alwayson.yaml"), "--file", "-f", help="The platform spec."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Restart (or upgrade) the gateways and front doors with zero dropped requests.

    Each new process takes the listening sockets over from the old one, which finishes
    its requests and exits: no connection is refused, no request is cut. Site by site,
    the gateway first, then the front door.
    """
    import asyncio

    from alwayson.api.client import ApiClient
    from alwayson.spec.loading import load_spec_file

    try:
        loaded = load_spec_file(file, check_commands=False)
    except SpecError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(2) from None

    async def flow() -> list[dict[str, object]]:
        client = ApiClient(loaded.spec.controller.api, read_token(loaded.state_dir), "gateway")
        async with client:
            return [r.model_dump() for r in await client.restart_gateways(site)]

    try:
        results = asyncio.run(flow())
    except AlwaysonError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
        return
    for row in results:
        typer.echo(
            f"{row['id']}: pid {row['old_pid']} handed over to pid {row['new_pid']} "
            f"in {row['seconds']:.2f}s"
        )
