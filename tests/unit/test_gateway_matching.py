"""Route matching and precedence."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alwayson.gateway.matching import RouteMatcher, normalize_host, request_path


def matcher(*entries: tuple[list[str], str | None, str]) -> RouteMatcher[str]:
    return RouteMatcher(entries)


def test_prefix_matches_at_segment_boundaries_only() -> None:
    routes = matcher(([], "/accounts", "accounts"))
    assert routes.match(b"x", b"/accounts") == "accounts"
    assert routes.match(b"x", b"/accounts/1") == "accounts"
    assert routes.match(b"x", b"/accounts?x=1") == "accounts"
    assert routes.match(b"x", b"/accountsx") is None
    assert routes.match(b"x", b"/account") is None
    assert routes.match(b"x", b"/") is None


def test_trailing_slash_in_prefix_is_the_same_prefix() -> None:
    routes = matcher(([], "/accounts/", "accounts"))
    assert routes.match(b"", b"/accounts") == "accounts"
    assert routes.match(b"", b"/accounts/7") == "accounts"
    assert routes.match(b"", b"/accountsx") is None


def test_root_prefix_matches_every_path() -> None:
    routes = matcher(([], "/", "root"))
    assert routes.match(b"", b"/") == "root"
    assert routes.match(b"", b"/anything/at/all?q") == "root"


def test_longer_prefix_wins() -> None:
    routes = matcher(
        ([], "/api", "api"),
        ([], "/api/v2/payments", "payments"),
        ([], "/api/v2", "v2"),
    )
    assert routes.match(b"", b"/api/v2/payments/9") == "payments"
    assert routes.match(b"", b"/api/v2/other") == "v2"
    assert routes.match(b"", b"/api/v1") == "api"


def test_precedence_host_and_path_then_path_then_host_then_catch_all() -> None:
    routes = matcher(
        ([], None, "catch-all"),
        (["bank.local"], None, "host-only"),
        ([], "/accounts", "path-only"),
        (["bank.local"], "/accounts", "host-and-path"),
        (["bank.local"], "/", "host-and-root"),
    )
    assert routes.match(b"bank.local", b"/accounts/1") == "host-and-path"
    # host+path beats path-only even with a shorter prefix
    assert routes.match(b"bank.local", b"/loans") == "host-and-root"
    assert routes.match(b"other.local", b"/accounts") == "path-only"
    assert routes.match(b"other.local", b"/loans") == "catch-all"


def test_host_only_beats_catch_all() -> None:
    routes = matcher(([], None, "catch-all"), (["bank.local", "www.bank.local"], None, "bank"))
    assert routes.match(b"www.bank.local", b"/x") == "bank"
    assert routes.match(b"elsewhere", b"/x") == "catch-all"


def test_no_route_is_none() -> None:
    routes = matcher((["bank.local"], "/accounts", "accounts"))
    assert routes.match(b"bank.local", b"/loans") is None
    assert routes.match(b"other", b"/accounts") is None
    assert RouteMatcher[str](()).match(b"", b"/") is None


def test_host_matching_is_case_insensitive_through_normalize_host() -> None:
    routes = matcher((["Bank.Local"], None, "bank"))
    assert routes.match(normalize_host(b"BANK.local:8080"), b"/") == "bank"


def test_normalize_host() -> None:
    assert normalize_host(b"Accounts.Bank.Local:8080") == b"accounts.bank.local"
    assert normalize_host(b"bank.local") == b"bank.local"
    assert normalize_host(b"[::1]:8080") == b"[::1]"
    assert normalize_host(b"") == b""


def test_request_path_of_absolute_and_origin_forms() -> None:
    assert request_path(b"/a/b?c=d") == b"/a/b?c=d"
    assert request_path(b"http://bank.local:8080/accounts?x=1") == b"/accounts?x=1"
    assert request_path(b"http://bank.local") == b"/"
    assert request_path(b"*") == b"*"


segment = st.text(alphabet="abcxyz-", min_size=1, max_size=5)


@given(st.lists(segment, min_size=1, max_size=3), st.lists(segment, max_size=3), segment)
def test_a_match_is_always_at_a_segment_boundary(
    prefix_parts: list[str], rest: list[str], junk: str
) -> None:
    prefix = "/" + "/".join(prefix_parts)
    routes = matcher(([], prefix, "hit"))
    path = prefix + "".join("/" + part for part in rest)
    assert routes.match(b"", path.encode()) == "hit"
    assert routes.match(b"", (prefix + junk).encode()) is None
