"""The sign-in cookie's attributes and its check at the callback."""

from __future__ import annotations

from gateway.oauth.clients import hash_secret
from gateway.oauth.sign_in_cookie import (
    browser_matches,
    cleared_sign_in_cookie,
    sign_in_cookie,
)
from gateway.oauth.transactions import UPSTREAM_TTL


def test_sign_in_cookie_https_secure_prefixed() -> None:
    """Over https the cookie is Secure and named with the __Secure- prefix."""
    cookie = sign_in_cookie("https://gw.example", "state-1", "secret")
    assert cookie.secure is True
    assert cookie.key.startswith("__Secure-agent_proxy_signin_")
    assert cookie.httponly is True
    assert cookie.samesite == "lax"
    assert cookie.path == "/oauth2/callback"
    assert cookie.max_age == UPSTREAM_TTL


def test_sign_in_cookie_http_not_secure() -> None:
    """Over plain http (development) the cookie cannot be Secure."""
    cookie = sign_in_cookie("http://127.0.0.1:8000", "state-1", "secret")
    assert cookie.secure is False
    assert cookie.key.startswith("agent_proxy_signin_")


def test_sign_in_cookie_path_prefix_kept() -> None:
    """A public URL with a path prefix puts the callback under it."""
    cookie = sign_in_cookie("https://gw.example/proxy/", "state-1", "secret")
    assert cookie.path == "/proxy/oauth2/callback"


def test_sign_in_cookie_name_per_state() -> None:
    """Two sign-ins get two cookie names, so parallel tabs do not clash."""
    first = sign_in_cookie("https://gw.example", "state-1", "a")
    second = sign_in_cookie("https://gw.example", "state-2", "b")
    assert first.key != second.key


def test_cleared_sign_in_cookie_expires_same_cookie() -> None:
    """The clearing cookie has the same name and path and max-age 0."""
    cookie = sign_in_cookie("https://gw.example", "state-1", "secret")
    cleared = cleared_sign_in_cookie("https://gw.example", "state-1")
    assert cleared.key == cookie.key
    assert cleared.path == cookie.path
    assert cleared.max_age == 0
    assert cleared.value == ""


def test_browser_matches_right_secret_only() -> None:
    """Only the stored secret under the state's cookie name matches."""
    issuer = "https://gw.example"
    name = sign_in_cookie(issuer, "state-1", "s").key
    stored = hash_secret("secret")
    assert browser_matches({name: "secret"}, issuer, "state-1", stored)
    assert not browser_matches({name: "other"}, issuer, "state-1", stored)
    assert not browser_matches({}, issuer, "state-1", stored)
    assert not browser_matches({name: "secret"}, issuer, "state-2", stored)


def test_browser_matches_empty_hash_never() -> None:
    """A transaction stored without a browser hash matches no cookie."""
    issuer = "https://gw.example"
    name = sign_in_cookie(issuer, "state-1", "s").key
    assert not browser_matches({name: ""}, issuer, "state-1", "")
    assert not browser_matches({name: "x"}, issuer, "state-1", "")
