"""The gateway's access tokens: RFC 9068 JWTs, minted here and verified here.

A token's ``aud`` is the one canonical resource of one backend, a string.
Besides the RFC 9068 claims it carries ``user_iss`` (the upstream IdP that
signed the user in), ``grant_id`` (the server-side grant with the user's
upstream tokens) and ``agent`` (the agent identity fixed at issuance).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any, TypeGuard

from gateway.agents import DEFAULT_AGENT
from gateway.oauth.grants import Grant
from gateway.oauth.keys import SigningKeys, TokenVerificationError

ACCESS_TOKEN_TYP = "at+jwt"
_ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_REQUIRED_STRINGS = ("sub", "client_id", "jti", "grant_id", "user_iss")


class AccessTokenError(Exception):
    """An access token that must be rejected.

    Attributes:
        reason: ``invalid_token``, ``token_expired`` or ``wrong_audience``.
        unknown_key: Whether the token names a ``kid`` the keys lack, which a
            reload of the key file may fix.
    """

    def __init__(
        self, message: str, *, reason: str = "invalid_token", unknown_key: bool = False
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.unknown_key = unknown_key


def agent_claim(grant: Grant) -> dict[str, Any]:
    """Return the ``agent`` claim for tokens of a grant."""
    if grant.agent_verified:
        trust = "verified"
    elif grant.agent_id == DEFAULT_AGENT:
        trust = "unknown"
    else:
        trust = "self-asserted"
    return {"id": grant.agent_id, "verified": grant.agent_verified, "trust": trust}


def mint_access_token(
    keys: SigningKeys,
    *,
    issuer: str,
    grant: Grant,
    scopes: Sequence[str],
    ttl: int,
    now: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign an access token for a grant's client, user and resource.

    Returns:
        The compact JWT and its claims.
    """
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": grant.resource,
        "sub": grant.user_sub,
        "user_iss": grant.user_iss,
        "client_id": grant.client_id,
        "jti": secrets.token_urlsafe(16),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "scope": " ".join(scopes),
        "grant_id": grant.grant_id,
        "agent": agent_claim(grant),
    }
    if grant.email:
        claims["email"] = grant.email
    return keys.sign(claims, typ=ACCESS_TOKEN_TYP), claims


def verify_access_token(
    keys: SigningKeys,
    token: str,
    *,
    issuer: str,
    audience: str,
    algorithms: Sequence[str],
    leeway: int = 30,
    require_typ: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a gateway access token for one resource and return its claims.

    Checks the signature and algorithm, and ``typ`` (``at+jwt`` or
    ``application/at+jwt``) unless ``require_typ`` is False. ``iss`` must equal
    ``issuer``. ``aud`` must be ``audience``, or an array whose every member is
    ``audience``, so a token that also names another audience is rejected.
    ``exp``, ``nbf`` and ``iat`` are checked with ``leeway`` seconds of clock
    skew, and ``sub``, ``client_id``, ``jti``, ``grant_id`` and ``user_iss``
    must be present.

    Raises:
        AccessTokenError: With ``reason`` ``token_expired``, ``wrong_audience``
            or ``invalid_token``, and a message that names the failed check.
    """
    try:
        header, claims = keys.verify(token, algorithms=algorithms)
    except TokenVerificationError as exc:
        unknown_key = exc.reason == "unknown_key"
        raise AccessTokenError(str(exc), unknown_key=unknown_key) from None
    typ = header.get("typ")
    if require_typ and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES):
        raise AccessTokenError(f"the token type {typ!r} is not at+jwt")
    if claims.get("iss") != issuer:
        raise AccessTokenError("the token was issued by another issuer")
    _check_audience(claims.get("aud"), audience)
    current = time.time() if now is None else now
    exp = claims.get("exp")
    if not _is_number(exp):
        raise AccessTokenError("the token has no exp claim")
    if current >= exp + leeway:
        raise AccessTokenError("the token has expired", reason="token_expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_number(nbf) or current + leeway < nbf):
        raise AccessTokenError("the token is not valid yet (nbf)")
    iat = claims.get("iat")
    if not _is_number(iat) or current + leeway < iat:
        raise AccessTokenError("the token's iat is missing or in the future")
    for name in _REQUIRED_STRINGS:
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise AccessTokenError(f"the token has no {name} claim")
    return claims


def _check_audience(aud: Any, audience: str) -> None:
    if isinstance(aud, str):
        if aud == audience:
            return
    elif isinstance(aud, list) and aud and all(item == audience for item in aud):
        return
    elif aud is None:
        raise AccessTokenError("the token has no aud claim", reason="wrong_audience")
    raise AccessTokenError(
        f"the token is not for this resource; its audience must be exactly {audience}",
        reason="wrong_audience",
    )


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
