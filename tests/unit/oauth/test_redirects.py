"""Redirect URI rules for registration and authorization."""

from __future__ import annotations

import re

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


ERROR_DESCRIPTION_CHARACTERS = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*")
"""The characters RFC 6749 section 5.2 allows in ``error_description``."""


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://127.0.0.1/cb\r\nX: y", "http://127.0.0.1/cb%0D%0AX:%20y"),
        ("http://127.0.0.1/c\tb", "http://127.0.0.1/c%09b"),
        ("http://127.0.0.1/cb\n", "http://127.0.0.1/cb%0A"),
        (" https://app.example.com/cb", "%20https://app.example.com/cb"),
        ("https://app.example.com/c b", "https://app.example.com/c%20b"),
        ("https://app.example.com/cb\x00", "https://app.example.com/cb%00"),
        ("https://app.example.com/cb\x7f", "https://app.example.com/cb%7F"),
        ("https://app.example.com/cb\u00a0", "https://app.example.com/cb%C2%A0"),
        ("https://app.example.com/cb\u202e", "https://app.example.com/cb%E2%80%AE"),
        ("https://app.example.com/caf\u00e9", "https://app.example.com/caf%C3%A9"),
        ("https://app.example.com\\@evil.example/cb", "app.example.com%5C@evil"),
        ('https://app.example.com/"cb"', "https://app.example.com/%22cb%22"),
        ("https://app.example.com/<cb>", "https://app.example.com/%3Ccb%3E"),
        ("https://app.example.com/cb%zz", "https://app.example.com/cb%zz"),
        ("https://app.example.com/cb%4", "https://app.example.com/cb%4"),
    ],
)
def test_redirect_uri_problem_unsafe_characters_rejected(uri: str, shown: str) -> None:
    """Control, space, non-ASCII and other non-RFC 3986 characters are rejected."""
    problem = redirect_uri_problem(uri)
    assert problem is not None
    assert shown in problem
    assert ERROR_DESCRIPTION_CHARACTERS.fullmatch(problem), problem


@pytest.mark.parametrize(
    "uri",
    [
        "https://*.example.com/cb",
        "https://app.*.example.com/cb",
        "https://app.example.com/*",
        "https://app.example.com/cb?next=*",
    ],
)
def test_redirect_uri_problem_wildcard_rejected(uri: str) -> None:
    """A wildcard anywhere is rejected, because matching is exact."""
    problem = redirect_uri_problem(uri)
    assert problem is not None
    assert "wildcard" in problem


@pytest.mark.parametrize(
    "uri",
    [
        "https://app..example.com/cb",
        "https://app_example!.com/cb",
        "https://%61pp.example.com/cb",
        "https://[not-an-ip]/cb",
        "https://[127.0.0.1]/cb",
    ],
)
def test_redirect_uri_problem_invalid_host_rejected(uri: str) -> None:
    """The host must be a DNS name, an IPv4 address or a bracketed IPv6 address."""
    assert redirect_uri_problem(uri) is not None


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example.com/cb%20x?state=a%2Fb&x=(1)",
        "https://[2001:db8::1]:8443/cb",
        "https://APP.Example.COM/Cb",
        "https://app.example.com/cb;v=1?a=b,c+d&e=$f'g'@h:i~j",
    ],
)
def test_redirect_uri_problem_rfc3986_characters_accepted(uri: str) -> None:
    """Percent-encoded octets and the RFC 3986 reserved characters are allowed."""
    assert redirect_uri_problem(uri) is None


@pytest.mark.parametrize(
    "requested",
    [
        "http://127.0.0.1:3000/callback\r\n",
        "http://127.0.0.1:4000/call\tback",
        "http://127.0.0.1:4000/callback\n",
        " http://127.0.0.1:3000/callback",
    ],
)
def test_redirect_uri_matches_control_characters_rejected(requested: str) -> None:
    """A requested URI with characters that URL parsing drops never matches."""
    assert not redirect_uri_matches(["http://127.0.0.1:3000/callback"], requested)
