"""Verify RFC 9068 JWT access tokens for an MCP server built on the official SDK."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import msgspec
import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from mcp.server.auth.provider import AccessToken

__all__ = ["JwtAccessTokenVerifier"]

logger = structlog.get_logger(__name__)

_ALGORITHMS = ["RS256"]
_ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
_REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id")
_MAX_JWKS_SIZE = 64 * 1024


class _TokenRejectedError(Exception):
    """The token is not acceptable; the message gives the reason."""


class JwtAccessTokenVerifier:
    """A ``TokenVerifier`` for RS256 JWT access tokens from one authorization server.

    A token is accepted when its ``typ`` is ``at+jwt``, its signature verifies
    with a key from ``jwks_url``, ``iss`` equals ``issuer``, ``aud`` equals
    ``audience`` exactly (a string, or an array of that one string), and it has
    not expired. The JWK Set is cached for ``cache_ttl`` seconds and fetched
    again, at most every ``refetch_interval`` seconds, when a token names an
    unknown ``kid``. Only ``jwks_url`` is ever fetched.

    Args:
        issuer: Expected ``iss``.
        audience: Expected ``aud``: this server's RFC 9728 resource.
        jwks_url: URL of the authorization server's JWK Set.
        cache_ttl: Seconds to keep a fetched JWK Set.
        refetch_interval: Minimum seconds between fetches for unknown keys.
        leeway: Allowed clock skew in seconds.
        timeout: Timeout of a JWK Set fetch, in seconds.
        clock: Returns the current time in seconds.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str,
        cache_ttl: float = 300.0,
        refetch_interval: float = 30.0,
        leeway: int = 30,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._jwks_url = jwks_url
        self._cache_ttl = cache_ttl
        self._refetch_interval = refetch_interval
        self._leeway = leeway
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._lock = anyio.Lock()
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def verify_token(self, token: str) -> AccessToken | None:
        """Return the token's grant, or None when the token is not acceptable."""
        try:
            claims = await self._verify(token)
        except _TokenRejectedError as exc:
            logger.info("demo.token_rejected", audience=self._audience, reason=str(exc))
            return None
        scope = claims.get("scope", "")
        return AccessToken(
            token=token,
            client_id=claims["client_id"],
            scopes=scope.split() if isinstance(scope, str) else [],
            expires_at=int(claims["exp"]),
            resource=self._audience,
            subject=claims["sub"],
            claims=claims,
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            msg = "the token is not a compact JWS"
            raise _TokenRejectedError(msg) from exc

        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            msg = f"typ {typ!r} is not at+jwt"
            raise _TokenRejectedError(msg)
        kid = header.get("kid")
        if header.get("alg") not in _ALGORITHMS or not isinstance(kid, str):
            msg = "the token must be RS256 with a kid"
            raise _TokenRejectedError(msg)

        keys = await self._key_set(kid)
        try:
            claims = jwt.decode(token, keys, algorithms=_ALGORITHMS).claims
        except JoseError as exc:
            msg = f"the signature is invalid ({exc.error})"
            raise _TokenRejectedError(msg) from exc

        missing = [name for name in _REQUIRED_CLAIMS if claims.get(name) is None]
        if missing:
            msg = f"the token lacks the claims {missing!r}"
            raise _TokenRejectedError(msg)
        registry = jwt.JWTClaimsRegistry(now=int(self._clock()), leeway=self._leeway)
        try:
            registry.validate(claims)
        except JoseError as exc:
            msg = f"the token claims are invalid ({exc.error})"
            raise _TokenRejectedError(msg) from exc

        if claims["iss"] != self._issuer:
            msg = f"iss {claims['iss']!r} is not the trusted issuer"
            raise _TokenRejectedError(msg)
        audience = claims["aud"]
        if audience != self._audience and audience != [self._audience]:
            msg = f"aud {audience!r} is not this resource"
            raise _TokenRejectedError(msg)
        if not isinstance(claims["client_id"], str):
            msg = "client_id must be a string"
            raise _TokenRejectedError(msg)
        return claims

    async def _key_set(self, kid: str) -> KeySet:
        async with self._lock:
            age = self._clock() - self._fetched_at
            stale = self._keys is None or age >= self._cache_ttl
            unknown = kid not in self._kids and age >= self._refetch_interval
            if stale or unknown:
                await self._fetch()
            if self._keys is None or kid not in self._kids:
                msg = f"no key with kid {kid!r} at the JWK Set URL"
                raise _TokenRejectedError(msg)
            return self._keys

    async def _fetch(self) -> None:
        self._fetched_at = self._clock()
        try:
            body = bytearray()
            async with self._client.stream("GET", self._jwks_url) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_JWKS_SIZE:
                        msg = f"the JWK Set is larger than {_MAX_JWKS_SIZE} bytes"
                        raise ValueError(msg)
            document = msgspec.json.decode(body)
            keys = KeySet.import_key_set(document)
        except (
            httpx.HTTPError,
            msgspec.DecodeError,
            ValueError,
            TypeError,
            JoseError,
        ) as exc:
            # Keep the previous keys: a brief outage must not reject valid tokens.
            logger.warning("demo.jwks_fetch_failed", url=self._jwks_url, error=str(exc))
            return
        self._keys = keys
        self._kids = frozenset(
            key["kid"] for key in document["keys"] if isinstance(key.get("kid"), str)
        )
