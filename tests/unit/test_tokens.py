"""Named API tokens with roles: made, listed, revoked; kept as digests in a 0600 file;
one table says what each role may do."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from alwayson.api.tokens import (
    TOKENS_FILE,
    Principal,
    TokenBook,
    create_token,
    ensure_token,
    list_tokens,
    needed_role,
    revoke_token,
)
from alwayson.util.credentials import ensure_secret


def test_a_named_token_is_kept_only_as_a_digest_in_a_private_file(tmp_path: Path) -> None:
    token = create_token(tmp_path, "ci-deployer", "operate")

    kept = (tmp_path / TOKENS_FILE).read_text()
    assert token not in kept
    assert stat.S_IMODE((tmp_path / TOKENS_FILE).stat().st_mode) == 0o600
    assert [e["name"] for e in json.loads(kept)["tokens"]] == ["ci-deployer"]


def test_the_book_knows_the_owner_and_named_tokens_and_forgets_a_revoked_one(
    tmp_path: Path,
) -> None:
    owner = ensure_token(tmp_path)
    book = TokenBook(tmp_path, owner)
    reader = create_token(tmp_path, "grafana", "read")

    assert book.authenticate(owner) == Principal("owner", "admin")
    assert book.authenticate(reader) == Principal("grafana", "read")
    assert book.authenticate("nope") is None
    assert book.authenticate("") is None

    assert revoke_token(tmp_path, "grafana")
    assert book.authenticate(reader) is None  # the controller sees the change at once
    assert not revoke_token(tmp_path, "grafana")
    assert not revoke_token(tmp_path, "owner")


def test_names_and_roles_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lowercase"):
        create_token(tmp_path, "CI Deployer", "read")
    with pytest.raises(ValueError, match="not 'owner'"):
        create_token(tmp_path, "owner", "admin")
    with pytest.raises(ValueError, match="one of read, operate, admin"):
        create_token(tmp_path, "ci", "root")
    create_token(tmp_path, "ci", "read")
    with pytest.raises(ValueError, match="exists"):
        create_token(tmp_path, "ci", "admin")


def test_list_never_shows_a_token_or_a_digest(tmp_path: Path) -> None:
    ensure_token(tmp_path)
    token = create_token(tmp_path, "ops", "operate")

    rows = list_tokens(tmp_path)

    assert [(r["name"], r["role"]) for r in rows] == [("owner", "admin"), ("ops", "operate")]
    assert token not in json.dumps(rows) and "sha256" not in json.dumps(rows)


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/api/v1/status", "read"),
        ("GET", "/api/v1/audit", "read"),
        ("POST", "/api/v1/plan", "read"),
        ("POST", "/api/v1/scale", "operate"),
        ("POST", "/api/v1/releases", "operate"),
        ("POST", "/api/v1/silences", "operate"),
        ("DELETE", "/api/v1/silences/abc", "operate"),
        ("POST", "/api/v1/databases/bank/failover", "operate"),
        ("POST", "/api/v1/drills", "operate"),
        ("POST", "/api/v1/apply", "admin"),
        ("POST", "/api/v1/down", "admin"),
    ],
)
def test_what_each_request_needs(method: str, path: str, role: str) -> None:
    assert needed_role(method, path) == role


def test_roles_are_ordered() -> None:
    assert Principal("a", "admin").may("operate") and Principal("a", "admin").may("read")
    assert Principal("o", "operate").may("read") and not Principal("o", "operate").may("admin")
    assert not Principal("r", "read").may("operate")


def test_a_platform_secret_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "run" / "gateway.token"

    first = ensure_secret(path)

    assert ensure_secret(path) == first and len(first) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_processes_racing_to_make_a_secret_all_read_the_same_whole_one(tmp_path: Path) -> None:
    """Three site controllers start at once and each calls ensure_token: a reader must
    never see the file made but not yet written (a controller once kept an empty token
    and refused the CLI's)."""
    import multiprocessing

    path = tmp_path / "token"
    with multiprocessing.get_context("fork").Pool(6) as pool:
        seen = pool.map(ensure_secret, [path] * 24)

    assert len(set(seen)) == 1 and len(seen[0]) >= 40
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no scratch left behind


def test_an_empty_token_never_authenticates(tmp_path: Path) -> None:
    book = TokenBook(tmp_path, "")

    assert book.authenticate("") is None
    assert book.authenticate("anything") is None


def test_an_empty_secret_file_is_refused_not_used(tmp_path: Path) -> None:
    from alwayson.util.errors import PermanentError

    (tmp_path / "token").write_text("")

    with pytest.raises(PermanentError, match="is empty: delete it"):
        ensure_token(tmp_path)
