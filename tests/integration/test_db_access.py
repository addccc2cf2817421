"""An operator's way into the database (issue 15, item 3): `db url` and `db connect`
through the site's endpoint, the password never on a command line, every use audited; the
services' role is not a superuser."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.integration.dbcluster import Cluster


def test_db_url_and_connect_as_app_and_admin_audited(cluster: Callable[..., Cluster]) -> None:
    made = cluster()
    platform = made.platform

    masked = platform.cli("db", "url").stdout.strip()
    shown: dict[str, Any] = json.loads(
        platform.cli("db", "url", "--show-password", "--json").stdout
    )
    assert masked.startswith("postgresql://bank:*****@127.") and masked.endswith("/bank")
    assert shown["url"] == masked.replace("*****", shown["password"]) and shown["password"]

    app = platform.cli("db", "connect", "-c", "select current_user, pg_is_in_recovery()")
    assert "bank" in app.stdout and " f" in app.stdout, app.stdout  # the primary, as app
    admin = platform.cli(
        "db", "connect", "--role", "admin", "--site", "surabaya", "-c", "select current_user"
    )
    assert "alwayson" in admin.stdout, admin.stdout

    # The services' role cannot run programs on the server (the probe's COPY ... TO PROGRAM).
    refused = platform.cli("db", "connect", "-c", "copy (select 1) to program 'id'", check=False)
    assert refused.returncode != 0
    assert "permission denied" in refused.stderr.lower() or "must be" in refused.stderr.lower()

    audit = json.loads(platform.cli("audit", "--json").stdout)
    asked = [e for e in audit if e["action"] == "db-credentials"]
    assert [(e["detail"]["role"], e["detail"]["site"]) for e in asked][:2] == [
        ("app", "jakarta"),
        ("admin", "surabaya"),
    ]
    assert all(e["actor"].startswith("owner (") for e in asked)
    assert shown["password"] not in json.dumps(audit)
