"""``alwayson db url`` and ``alwayson db connect``: an operator's audited way into a
database, through its site's endpoint (the password never on a command line)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from alwayson.cli.common import JsonOpt, SpecOpt, _call, _emit_json, _wrap
from alwayson.cli.databases import DbOpt, _name, db_app

if TYPE_CHECKING:
    from alwayson.api.client import ApiClient

RoleOpt = typer.Option(
    "app", "--role", help="app: the services' role; admin: the superuser (use with care)."
)
SiteOpt = typer.Option(None, "--site", help="Whose endpoint (default: the primary site).")


def _credentials(
    file: Path, command: str, database: str | None, role: str, site: str | None
) -> dict[str, Any]:
    async def ask(client: ApiClient) -> dict[str, Any]:
        name = await _name(client, database)
        body = {"role": role, "site": site}
        return dict(await client.post_json(f"/api/v1/databases/{name}/credentials", body))

    return _call(file, command, ask)


def masked(url: str, password: str) -> str:
    from urllib.parse import quote

    return url.replace(f":{quote(password, safe='')}@", ":*****@", 1)


@db_app.command("url")
def url(
    database: str | None = DbOpt,
    role: str = RoleOpt,
    site: str | None = SiteOpt,
    show_password: bool = typer.Option(
        False, "--show-password", help="Print the password in the URL (it is masked otherwise)."
    ),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A database's connection URL through its site's endpoint (which follows the
    primary). Needs an admin token; the audit log records who asked, for which role and
    site."""

    def go() -> None:
        found = _credentials(file, "db url", database, role, site)
        shown = found["url"] if show_password else masked(found["url"], found["password"])
        if as_json:
            keep = {k: v for k, v in found.items() if k != "psql"}
            if not show_password:
                keep = {**keep, "password": "*****", "url": shown}
            _emit_json(keep)
            return
        print(shown)

    _wrap(go)


@db_app.command("connect")
def connect(
    database: str | None = DbOpt,
    role: str = RoleOpt,
    site: str | None = SiteOpt,
    command: str | None = typer.Option(
        None, "--command", "-c", help="Run one SQL command and exit (psql -c)."
    ),
    file: Path = SpecOpt,
) -> None:
    """Open psql on a database through its site's endpoint. The password goes to psql in
    its environment (PGPASSWORD), never on the command line; the session is audited (who,
    role, site).

    Example: `alwayson db connect --role app -c "select count(*) from customers"`.
    """
    import os

    def go() -> None:
        found = _credentials(file, "db connect", database, role, site)
        argv = [
            found["psql"],
            "--no-psqlrc",
            f"host={found['host']} port={found['port']} user={found['user']} "
            f"dbname={found['dbname']} sslmode=disable",
        ]
        if command is not None:
            argv += ["-c", command]
        env = {**os.environ, "PGPASSWORD": found["password"]}
        os.execve(argv[0], argv, env)  # psql takes the terminal over, as `kubectl exec` does

    _wrap(go)
