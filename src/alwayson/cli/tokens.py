"""``alwayson token``: named API tokens with a role, made, listed and revoked.

These act on the state directory's ``tokens.json`` directly (only the platform's owner can
write it, mode 0600), so they work whether or not a controller runs; a running controller
sees a change at its next request.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from alwayson.api.tokens import ROLES, create_token, list_tokens, revoke_token
from alwayson.cli.common import JsonOpt, SpecOpt, _emit_json, _locate, console, err

token_app = typer.Typer(
    help="API tokens with a role: read (look), operate (change what runs), admin (apply, "
    "down). The audit log names the token of every change.",
    no_args_is_help=True,
)


@token_app.command("create")
def create(
    name: str = typer.Argument(..., help="Who or what holds it, e.g. ci-deployer."),
    role: str = typer.Option(
        "read", "--role", help=f"One of {', '.join(ROLES)}: what the token may do."
    ),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Make a token and print it, once: it is kept only as a digest.

    Example: `alwayson token create ci-deployer --role operate`, then give the printed
    token to the CI as `Authorization: Bearer <token>`.
    """
    state_dir = _locate(file).state_dir
    try:
        token = create_token(state_dir, name, role)
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    if as_json:
        _emit_json({"name": name, "role": role, "token": token})
        return
    err.print(f"token {name} ({role}); shown once, keep it in a secret store:")
    print(token)


@token_app.command("list")
def list_(file: Path = SpecOpt, as_json: bool = JsonOpt) -> None:
    """Every token's name, role and creation time (never the token)."""
    rows = list_tokens(_locate(file).state_dir)
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        made = row.get("created")
        when = (
            dt.datetime.fromtimestamp(made, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            if made
            else "with the platform (file " + str(row.get("file")) + ")"
        )
        console.print(f"{row['name']:<24} {row['role']:<8} {when}", markup=False)


@token_app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="The token's name (see `alwayson token list`)."),
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stop accepting a token: its next request is refused (401)."""
    if not revoke_token(_locate(file).state_dir, name):
        err.print(
            f"error: no token named {name!r} (the owner's token is the state directory's "
            "`token` file: replace it by stopping the platform and deleting that file)",
            markup=False,
        )
        raise typer.Exit(1)
    if as_json:
        _emit_json({"revoked": name})
        return
    console.print(f"revoked {name}")
