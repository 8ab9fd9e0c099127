"""The ``authenticate`` stage: who is the user behind this request."""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from typing import Any, ClassVar, NamedTuple

import msgspec

from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.events import AuthenticationFailed, RequestAuthenticated, UserRef
from gateway.facts import PRINCIPAL, Principal
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response
from gateway.oauth.access_tokens import AccessTokenError, verify_access_token
from gateway.oauth.keys import SUPPORTED_ALGORITHMS
from gateway.oauth.metadata import SUPPORTED_SCOPES, resource_metadata_url
from gateway.oauth.responses import NOT_DESCRIPTION_CHARACTER
from gateway.oauth.revoked_tokens import is_access_token_revoked
from pipeline import BaseStage, Next

VERIFIED_CACHE_SIZE = 10_000
"""Verified access tokens kept per stage instance, least recently added first out."""

UNAUTHORIZED = -32001
"""JSON-RPC error code of a 401 response, from the implementation-defined range."""

MAX_LEEWAY = 300

MISSING_TOKEN_DETAIL = "no access token was sent"
"""The ``detail`` of a request without an ``Authorization`` header."""


class AuthenticateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``authenticate`` stage."""

    algorithms: list[str] = msgspec.field(default_factory=lambda: ["ES256"])
    """Accepted token signature algorithms; must include ``signing.algorithm``."""
    leeway: int = 30
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``, in seconds."""
    require_typ: bool = True
    """Reject tokens whose ``typ`` header is not ``at+jwt`` (RFC 9068 section 4)."""

    def __post_init__(self) -> None:
        if not self.algorithms:
            msg = "algorithms must not be empty"
            raise ValueError(msg)
        for algorithm in self.algorithms:
            if algorithm not in SUPPORTED_ALGORITHMS:
                msg = (
                    f"algorithm {algorithm!r} is not supported; "
                    f"use {sorted(SUPPORTED_ALGORITHMS)}"
                )
                raise ValueError(msg)
        if not 0 <= self.leeway <= MAX_LEEWAY:
            msg = (
                f"leeway must be between 0 and {MAX_LEEWAY} seconds, got {self.leeway}"
            )
            raise ValueError(msg)


class AuthenticateStage(BaseStage[RequestContext, GatewayResponse]):
    """Verify the gateway access token of an MCP request.

    Reads the ``Authorization: Bearer`` header. The token must be signed by
    the gateway's keys with an allowed algorithm, have ``typ`` ``at+jwt``,
    ``iss`` equal to ``server.public_url``, and ``aud`` equal to this backend's
    resource: a string, or an array whose members are all that resource. A
    token that also names any other audience is rejected. ``exp``, ``nbf``
    and ``iat`` are checked with the leeway, and the grant the token refers
    to must still exist. A token whose ``kid`` no loaded key has makes the
    gateway read its key file again (at most every 30 seconds), so that a
    rotation by another process sharing the file is picked up. A token
    verified earlier is verified again once its key is no longer loaded, so
    removing a key from the key file ends its tokens at once.

    Success provides ``principal`` and publishes ``RequestAuthenticated``.
    Failure ends the chain with HTTP 401 and publishes ``AuthenticationFailed``.
    The response has a ``WWW-Authenticate: Bearer`` challenge that points at
    the backend's resource metadata, with ``error="invalid_token"`` when a
    token was sent. Its body is a JSON-RPC error with code -32001 and a
    ``data.reason`` of ``missing_token``, ``invalid_token``, ``token_expired``,
    ``wrong_audience``, ``grant_revoked`` or ``token_revoked`` (revoked at
    the revocation endpoint before it expired).

    Raises:
        ConfigError: At construction, when ``algorithms`` does not include
            the algorithm the gateway signs with.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset({PRINCIPAL})
    stability = "beta"
    Config = AuthenticateConfig

    def __init__(self, *, name: str, config: Any, resources: Any) -> None:
        super().__init__(name=name, config=config, resources=resources)
        self._verified: OrderedDict[tuple[str, str], _Verified] = OrderedDict()
        gateway_config = getattr(resources, "config", None)
        signing = getattr(gateway_config, "signing", None)
        if signing is not None and signing.algorithm not in config.algorithms:
            raise ConfigError(
                [
                    f"stages.{name}.algorithms: {config.algorithms!r} does not include "
                    f"signing.algorithm {signing.algorithm!r}, so no token the gateway "
                    f"issues would verify; add {signing.algorithm!r}"
                ]
            )

    def _remember(self, token: str, resource: str, claims: dict[str, Any]) -> None:
        # A signature check costs more than the rest of this stage, and the
        # same token comes back on every request of a session. Expiry and the
        # signing key are still checked on every hit, and the grant is looked
        # up every time, so revocation applies at once.
        self._verified[(token, resource)] = _Verified(claims, _header_kid(token))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)

    def _cached_claims(
        self, runtime: Any, token: str, resource: str
    ) -> dict[str, Any] | None:
        """Return the claims of a token verified before, if still usable as is.

        None when the token was not verified before, has expired, or its
        signing key is no longer loaded (removed from the key file).
        """
        verified = self._verified.get((token, resource))
        if verified is None:
            return None
        if verified.claims["exp"] + self.config.leeway <= time.time():
            return None
        if verified.kid is None or not runtime.keys.knows(verified.kid):
            return None
        return verified.claims

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide ``principal``, or end the chain with 401."""
        header = ctx.headers.get("authorization", "").strip()
        if not header:
            return await self._reject(ctx, "missing_token", MISSING_TOKEN_DETAIL)
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer":
            # Another scheme carries no bearer token at all, so the challenge
            # has no error code (RFC 6750 section 3.1).
            return await self._reject(
                ctx,
                "missing_token",
                "the Authorization header must use the Bearer scheme",
            )
        if not token:
            return await self._reject(ctx, "invalid_token", "the bearer token is empty")
        runtime = ctx.runtime
        claims = self._cached_claims(runtime, token, ctx.resource)
        if claims is None:
            try:
                claims = await self._verify(runtime, token, ctx.resource)
            except AccessTokenError as exc:
                self._verified.pop((token, ctx.resource), None)
                return await self._reject(ctx, exc.reason, str(exc))
            self._remember(token, ctx.resource, claims)
        grant = await runtime.grants.get(claims["grant_id"])
        if grant is None:
            return await self._reject(
                ctx,
                "grant_revoked",
                "the sign-in behind this token has ended; sign in again",
            )
        if grant.client_id != claims["client_id"] or grant.user_sub != claims["sub"]:
            return await self._reject(
                ctx, "invalid_token", "the token does not match its grant"
            )
        if await is_access_token_revoked(runtime.store, claims["jti"]):
            return await self._reject(
                ctx, "token_revoked", "this access token was revoked; get a new one"
            )
        principal = _principal(claims)
        ctx.provide(PRINCIPAL, principal)
        await runtime.publish(
            RequestAuthenticated(
                request_id=ctx.request_id,
                stage=self.name,
                user=UserRef(iss=principal.iss, sub=principal.sub),
                backend=ctx.backend_name,
                method=ctx.mcp_method,
                tool=ctx.tool,
                client_id=principal.client_id,
                token_id=principal.token_id,
            )
        )
        return await call_next(ctx)

    async def _verify(self, runtime: Any, token: str, resource: str) -> dict[str, Any]:
        """Verify a token; on an unknown ``kid``, reload the keys and try once more.

        Raises:
            AccessTokenError: The token is not valid for ``resource``.
        """

        def verify() -> dict[str, Any]:
            return verify_access_token(
                runtime.keys,
                token,
                issuer=runtime.issuer,
                audience=resource,
                algorithms=self.config.algorithms,
                leeway=self.config.leeway,
                require_typ=self.config.require_typ,
            )

        try:
            return verify()
        except AccessTokenError as exc:
            # Another process sharing the key file may have rotated it.
            if not exc.unknown_key or not await runtime.keys.reload_for_unknown_kid():
                raise
        return verify()

    async def _reject(
        self, ctx: RequestContext, reason: str, detail: str
    ) -> GatewayResponse:
        await ctx.runtime.publish(
            AuthenticationFailed(
                request_id=ctx.request_id,
                stage=self.name,
                backend=ctx.backend_name,
                method=ctx.mcp_method,
                tool=ctx.tool,
                outcome="denied",
                reason=reason,
                detail=detail,
            )
        )
        challenge = bearer_challenge(
            ctx.runtime.issuer,
            ctx.backend.path,
            error_description=None if reason == "missing_token" else detail,
        )
        return jsonrpc_error_response(
            401,
            ctx.message.id if ctx.message is not None else None,
            UNAUTHORIZED,
            f"Unauthorized: {detail}",
            reason=reason,
            headers={"www-authenticate": challenge},
        )


def bearer_challenge(
    issuer: str, backend_path: str, *, error_description: str | None = None
) -> str:
    """Build the ``WWW-Authenticate`` value of a 401 from a backend's endpoint.

    The challenge names the backend's protected resource metadata and the
    supported scopes. With ``error_description`` (a token was sent but is
    unusable) it adds ``error="invalid_token"`` and the description, with the
    characters RFC 6750 does not allow there removed.
    """
    metadata = resource_metadata_url(issuer, backend_path)
    scope = " ".join(SUPPORTED_SCOPES)
    challenge = f'Bearer resource_metadata="{metadata}", scope="{scope}"'
    if error_description is not None:
        # RFC 6750 section 3 allows the same characters as RFC 6749.
        description = NOT_DESCRIPTION_CHARACTER.sub("", error_description)
        challenge += f', error="invalid_token", error_description="{description}"'
    return challenge


class _Verified(NamedTuple):
    """The claims of a verified token and the ``kid`` of the key that signed it."""

    claims: dict[str, Any]
    kid: str | None


def _header_kid(token: str) -> str | None:
    """Return the ``kid`` of a compact JWS header; call only after verifying it."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        )
    except ValueError:
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _principal(claims: dict[str, Any]) -> Principal:
    agent = claims.get("agent")
    email = claims.get("email")
    scope = claims.get("scope")
    return Principal(
        iss=claims["user_iss"],
        sub=claims["sub"],
        client_id=claims["client_id"],
        grant_id=claims["grant_id"],
        scopes=tuple(scope.split()) if isinstance(scope, str) else (),
        agent_claim=agent if isinstance(agent, dict) else None,
        token_id=claims["jti"],
        email=email if isinstance(email, str) else None,
        expires_at=int(claims["exp"]),
    )
