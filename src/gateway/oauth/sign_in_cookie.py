"""The cookie that binds a sign-in at the IdP to the browser that started it.

When the gateway sends a browser to the IdP (after consent, or with the
consent page skipped), it sets a random secret in a cookie and stores the
secret's hash with the upstream ``state``. The callback accepts the IdP's
response only from a browser that sends that cookie back (RFC 6749 section
10.12, RFC 9700 section 4.7). Without it, someone could approve a sign-in in
their own browser, send the IdP URL to a victim, and receive a code for the
victim's account at their own redirect URI.

The cookie is HttpOnly, ``SameSite=Lax`` because the IdP returns the browser
with a cross-site top-level GET, limited to the callback path, and Secure
when the gateway's public URL is https. Its name includes a hash of the
``state``, so sign-ins started in two tabs do not overwrite each other.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from litestar.datastructures import Cookie

from gateway.oauth.clients import hash_secret
from gateway.oauth.transactions import UPSTREAM_TTL

__all__ = ["browser_matches", "cleared_sign_in_cookie", "sign_in_cookie"]

_NAME = "agent_proxy_signin_"
_SECURE_NAME = "__Secure-agent_proxy_signin_"
"""The name prefix over https; browsers accept ``__Secure-`` only with Secure."""


def sign_in_cookie(issuer: str, state: str, secret: str) -> Cookie:
    """Return the cookie that carries ``secret`` for the sign-in ``state``."""
    return _cookie(issuer, state, secret, UPSTREAM_TTL)


def cleared_sign_in_cookie(issuer: str, state: str) -> Cookie:
    """Return a cookie that removes the sign-in cookie of ``state``."""
    return _cookie(issuer, state, "", 0)


def browser_matches(
    cookies: dict[str, str], issuer: str, state: str, browser_hash: str
) -> bool:
    """Return whether the request's cookies hold the secret of this sign-in."""
    secret = cookies.get(_name(issuer, state), "")
    if not secret or not browser_hash or len(secret) > 100:
        return False
    return hmac.compare_digest(hash_secret(secret), browser_hash)


def _cookie(issuer: str, state: str, value: str, max_age: int) -> Cookie:
    secure = issuer.startswith("https://")
    return Cookie(
        key=_name(issuer, state),
        value=value,
        # Behind a proxy that serves the gateway under a path prefix, the
        # callback URL includes that prefix.
        path=urlsplit(issuer).path.rstrip("/") + "/oauth2/callback",
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def _name(issuer: str, state: str) -> str:
    prefix = _SECURE_NAME if issuer.startswith("https://") else _NAME
    return prefix + hash_secret(state)[:16]
