"""Redirect URI rules for registration and authorization."""

from __future__ import annotations

import pytest

from gateway.oauth.redirects import (
    redirect_uri_matches,
    redirect_uri_problem,
    with_query,
)


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example.com/callback",
        "http://127.0.0.1/callback",
        "http://127.0.0.1:33418/callback",
        "http://[::1]:8080/cb",
        "http://localhost:6274/oauth/callback",
        "https://app.example.com/cb?tenant=1",
    ],
)
def test_redirect_uri_problem_allowed_uri_accepted(uri: str) -> None:
    """https URIs and plain-http loopback URIs can be registered."""
    assert redirect_uri_problem(uri) is None


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("http://app.example.com/callback", "https"),
        ("http://127.0.0.2/callback", "https"),
        ("http://localhost.example.com/cb", "https"),
        ("cursor://anysphere.cursor-retrieval/oauth/callback", "https"),
        ("javascript:alert(1)", "absolute"),
        ("/callback", "absolute"),
        ("https://app.example.com/cb#frag", "fragment"),
        ("https://user@app.example.com/cb", "user information"),
        ("https://app.example.com:99999/cb", "absolute"),
        ("https://app.example.com/" + "a" * 2000, "longer"),
    ],
)
def test_redirect_uri_problem_rejected_uri_explained(uri: str, words: str) -> None:
    """Other URIs are rejected with a reason."""
    problem = redirect_uri_problem(uri)
    assert problem is not None
    assert words in problem


def test_redirect_uri_matches_exact_uri_accepted() -> None:
    """An exactly registered URI matches."""
    assert redirect_uri_matches(["https://a.example/cb"], "https://a.example/cb")


def test_redirect_uri_matches_loopback_any_port_accepted() -> None:
    """A loopback URI may use another port than registered (RFC 8252 section 7.3)."""
    registered = ["http://127.0.0.1:3000/callback"]
    assert redirect_uri_matches(registered, "http://127.0.0.1:51234/callback")
    assert redirect_uri_matches(registered, "http://127.0.0.1/callback")
    assert redirect_uri_matches(["http://localhost/cb"], "http://localhost:9999/cb")


@pytest.mark.parametrize(
    "requested",
    [
        "http://127.0.0.1:3000/other",
        "http://127.0.0.1:3000/callback?x=1",
        "http://localhost:3000/callback",
        "https://127.0.0.1:3000/callback",
        "http://127.0.0.1:3000/callback#f",
        "http://evil@127.0.0.1:3000/callback",
    ],
)
def test_redirect_uri_matches_loopback_other_parts_rejected(requested: str) -> None:
    """Only the port of a loopback URI may differ."""
    assert not redirect_uri_matches(["http://127.0.0.1:3000/callback"], requested)


def test_redirect_uri_matches_https_other_port_rejected() -> None:
    """A non-loopback URI must match exactly, port included."""
    assert not redirect_uri_matches(
        ["https://a.example/cb"], "https://a.example:8443/cb"
    )
    assert not redirect_uri_matches(["https://a.example/cb"], "https://a.example/cb/")


def test_with_query_existing_query_kept() -> None:
    """Parameters are added to an existing query, and None values are left out."""
    uri = with_query("https://a.example/cb?tenant=1", {"code": "c d", "state": None})
    assert uri == "https://a.example/cb?tenant=1&code=c+d"
