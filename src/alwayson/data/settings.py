"""The PostgreSQL configuration alwayson writes (pure text from a DatabaseConfig).

``alwayson.conf`` is rewritten before every start (the listen address differs per site and
a base backup copies the primary's file) and on role changes; ``postgresql.conf`` only
includes it. ``synchronous_standby_names`` lives here too, not in ``ALTER SYSTEM``, so a
promoted standby never inherits a list that names itself.
"""

from __future__ import annotations

from pathlib import Path

from alwayson.data.layout import SUPERUSER, DatabaseConfig, passfile_of
from alwayson.util.addresses import split_hostport
from alwayson.util.replication import slot_name

INCLUDE_LINE = "include_if_exists = 'alwayson.conf'\n"


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def conninfo_value(value: str) -> str:
    """A libpq connection-string value: quoted when it holds a space, quote or backslash."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def archive_command(repo: Path) -> str:
    target = f'"{repo}/wal/%f"'
    return (
        f"if [ -f {target} ]; then cmp -s %p {target}; "
        f'else cp %p "{repo}/wal/%f.part" && mv "{repo}/wal/%f.part" {target}; fi'
    )


def postgresql_conf(
    cfg: DatabaseConfig,
    listen: str,
    sync_names: list[str],
    follow: str | None = None,
    restore_from: Path | None = None,
    recovery_target: dict[str, str] | None = None,
    archive: bool = True,
) -> str:
    host, port = split_hostport(listen)
    lines = {
        "listen_addresses": quote(host),
        "port": str(port),
        "unix_socket_directories": "''",
        "cluster_name": quote(f"{cfg.name}@{cfg.site}"),
        "max_connections": "200",
        "shared_buffers": "'32MB'",
        "wal_level": "replica",
        "max_wal_senders": "8",
        "max_replication_slots": "8",
        "max_slot_wal_keep_size": "'1GB'",
        "wal_keep_size": "'64MB'",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "wal_log_hints": "on",
        "wal_receiver_status_interval": "'1s'",
        "wal_sender_timeout": "'10s'",
        "wal_receiver_timeout": "'10s'",
        "password_encryption": "'scram-sha-256'",
        "synchronous_commit": "on",
        "synchronous_standby_names": quote(
            f"FIRST 1 ({', '.join(slot_name(s) for s in sync_names)})" if sync_names else ""
        ),
        "archive_mode": "always" if archive else "off",
        "archive_command": quote(archive_command(Path(cfg.repo_dir))),
        "archive_timeout": "'60s'",
        "recovery_target_timeline": "'latest'",
        "log_min_messages": "warning",
        "log_line_prefix": "'%m [%p] '",
    }
    if follow is not None:
        f_host, f_port = split_hostport(follow)
        lines["primary_conninfo"] = quote(
            f"host={f_host} port={f_port} user={SUPERUSER} "
            f"passfile={conninfo_value(str(passfile_of(cfg)))} "
            f"application_name={slot_name(cfg.site)} connect_timeout=2"
        )
        lines["primary_slot_name"] = quote(slot_name(cfg.site))
    if restore_from is not None:
        lines["restore_command"] = quote(f'cp "{restore_from}/wal/%f" %p')
        lines["primary_conninfo"] = "''"
    for key, value in (recovery_target or {}).items():
        lines[key] = quote(value) if key != "recovery_target_inclusive" else value
    for key, val in cfg.settings.items():
        if isinstance(val, bool):
            lines[key] = "on" if val else "off"
        elif isinstance(val, int | float):
            lines[key] = str(val)
        else:
            lines[key] = quote(val)
    body = "".join(f"{k} = {v}\n" for k, v in lines.items())
    return "# written by alwayson before every start; edit databases[].settings instead\n" + body


HBA = (
    "# written by alwayson\n"
    "host all all 127.0.0.0/8 scram-sha-256\n"
    f"host replication {SUPERUSER} 127.0.0.0/8 scram-sha-256\n"
)
