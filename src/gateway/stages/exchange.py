"""The ``exchange`` stage: the credentials the gateway presents to the backend."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import structlog

from gateway.context import RequestContext
from gateway.errors import UpstreamError
from gateway.events import ExchangeFailed, TokenExchanged
from gateway.exchange.service import ObtainedCredentials
from gateway.facts import (
    AGENT,
    BACKEND_CREDENTIALS,
    DECISION,
    PRINCIPAL,
    AgentIdentity,
    Principal,
)
from gateway.mcp.jsonrpc import INTERNAL_ERROR
from gateway.mcp.response import GatewayResponse, StreamOutcome, jsonrpc_error_response
from gateway.oauth.grant_revocation import announce_revoked
from gateway.oauth.grants import ID_TOKEN_REJECTED, Grant, GrantEndedError
from gateway.stages.authenticate import UNAUTHORIZED, bearer_challenge
from gateway.stages.forward import BACKEND_STATUS
from pipeline import BaseStage, Next

log = structlog.get_logger("gateway.stages.exchange")

EXCHANGE_FAILED = INTERNAL_ERROR
"""JSON-RPC code of an exchange failure sent with HTTP 200, 502 or 503.

A 401 uses the ``authenticate`` stage's code. ``data.reason`` tells them apart.
"""

REAUTHENTICATION_REQUIRED = "reauthentication_required"

DEFAULT_RETRY_AFTER = 30
"""Seconds suggested to the client when an outage came without a hint."""
_OUTAGES = frozenset({"idp_unavailable", "authorization_server_unavailable"})

# The explanation of each reason, which completes "could not be obtained: ...".
_EXPLANATIONS = {
    REAUTHENTICATION_REQUIRED: "the identity provider no longer accepts this "
    "sign-in; sign in again",
    "invalid_target": "the identity provider does not accept the backend's "
    "authorization server or resource",
    "unauthorized_client": "the gateway is not allowed to request access to "
    "this backend",
    "invalid_client": "the gateway's client authentication was rejected",
    "invalid_scope": "the requested scopes were refused",
    "invalid_grant": "the backend's authorization server rejected the identity "
    "assertion",
    "invalid_response": "an authorization server returned an invalid response",
    "idp_unavailable": "the identity provider is unavailable",
    "authorization_server_unavailable": "the backend's authorization server "
    "is unavailable",
    "issuer_not_allowed": "the backend's authorization server is not on the "
    "gateway's allow-list",
    "backend_as_discovery_failed": "the backend's authorization server could "
    "not be discovered from its metadata",
}


class ExchangeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``exchange`` stage."""

    retry_on_unauthorized: bool = True
    """After an ``id-jag`` backend returns 401, drop the cached token,
    exchange again and send the request once more (not for streamed
    responses)."""


class ExchangeStage(BaseStage[RequestContext, GatewayResponse]):
    """Obtain the backend credentials: a static one or an ID-JAG backend token.

    Reads ``principal`` and ``agent``, and requires ``decision`` so that
    nothing is exchanged before authorization. Provides
    ``backend_credentials`` and publishes ``TokenExchanged``, which names the
    auth kind, cache hit or miss, audience and lifetime, but never the token.

    Ends the chain early when credentials cannot be obtained, after
    publishing ``ExchangeFailed`` with the step and the OAuth error:

    - only a new sign-in helps (``reauthentication_required``): the gateway
      grant is revoked, ``GrantRevoked`` is published with the cause, and the
      answer is 401 with ``WWW-Authenticate: Bearer error="invalid_token"``
      and ``resource_metadata``, so the client signs in again instead of
      refreshing;
    - another refusal (``invalid_target``, ``unauthorized_client``, ...): HTTP
      200 with a JSON-RPC error whose ``data`` has ``reason`` and
      ``oauth_error``;
    - the IdP or authorization server is down: the same, with
      ``data.retry_after``.

    A message that is not a JSON-RPC request (a notification, GET or DELETE)
    has no id to answer, so it gets 502, or 503 with ``Retry-After``.

    After the rest of the chain: when the forward stage reports a backend 401
    in ``ctx.attributes["backend_status"]`` for an ``id-jag`` backend and the
    response is not streamed, the cached token is dropped, a new one is
    obtained and the rest of the chain runs once more.
    """

    requires: ClassVar[frozenset[str]] = frozenset({PRINCIPAL, AGENT, DECISION})
    provides: ClassVar[frozenset[str]] = frozenset({BACKEND_CREDENTIALS})
    stability = "beta"
    Config = ExchangeConfig

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide ``backend_credentials``, or return the failure response."""
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity = ctx.fact(AGENT)
        obtained = await self._obtain(ctx, principal, agent)
        if isinstance(obtained, GatewayResponse):
            return obtained
        response = await call_next(ctx)
        if not self._should_retry(ctx, obtained, response):
            return response

        log.info(
            "exchange.backend_rejected_token",
            request_id=ctx.request_id,
            backend=ctx.backend_name,
            agent_id=agent.id,
        )
        ctx.runtime.credentials.invalidate(
            backend=ctx.backend_name,
            principal=principal,
            agent=agent,
            rejected=obtained.credentials,
        )
        await _discard(response)
        ctx.attributes.pop(BACKEND_STATUS, None)
        retried = await self._obtain(ctx, principal, agent)
        if isinstance(retried, GatewayResponse):
            return retried
        return await call_next(ctx)

    def _should_retry(
        self,
        ctx: RequestContext,
        obtained: ObtainedCredentials,
        response: GatewayResponse,
    ) -> bool:
        return (
            self.config.retry_on_unauthorized
            and obtained.credentials.kind == "id-jag"
            and ctx.attributes.get(BACKEND_STATUS) == 401
            and not response.is_stream
        )

    async def _obtain(
        self, ctx: RequestContext, principal: Principal, agent: AgentIdentity
    ) -> ObtainedCredentials | GatewayResponse:
        """Provide the credentials fact, or return the failure response."""
        try:
            obtained = await ctx.runtime.credentials.obtain(
                backend=ctx.backend_name, principal=principal, agent=agent
            )
        except UpstreamError as exc:
            return await self._failed(ctx, principal, agent, exc)
        credentials = obtained.credentials
        ctx.provide(BACKEND_CREDENTIALS, credentials)
        await ctx.runtime.publish(
            TokenExchanged(
                **ctx.event_fields(self.name),
                auth_kind=credentials.kind,
                cache=credentials.cache,
                audience=obtained.audience,
                expires_in=obtained.expires_in,
            )
        )
        return obtained

    async def _failed(
        self,
        ctx: RequestContext,
        principal: Principal,
        agent: AgentIdentity,
        exc: UpstreamError,
    ) -> GatewayResponse:
        """Log and publish ``ExchangeFailed``, revoke the grant if needed, respond."""
        backend = ctx.backend_name
        # An outage carries the code of the server's 5xx or 429 body, if any.
        oauth_error: str | None = getattr(exc, "oauth_error", None)
        # Only a misconfigured IdP or an invalid refreshed ID token carry no step.
        step = getattr(exc, "step", "upstream")
        reason = exc.reason
        log.warning(
            "exchange.failed",
            request_id=ctx.request_id,
            backend=backend,
            agent_id=agent.id,
            user_sub=principal.sub,
            reason=reason,
            step=step,
            oauth_error=oauth_error,
            retry_after=exc.retry_after,
            error=str(exc),
        )
        await ctx.runtime.publish(
            ExchangeFailed(
                **ctx.event_fields(self.name),
                outcome="error",
                reason=reason,
                auth_kind=_auth_kind(ctx),
                step=step,
                oauth_error=oauth_error,
                detail=str(exc),
            )
        )

        if reason == REAUTHENTICATION_REQUIRED:
            await self._revoke_grant(ctx, principal, exc, oauth_error)
        return _failure_response(ctx, exc, step, oauth_error)

    async def _revoke_grant(
        self,
        ctx: RequestContext,
        principal: Principal,
        exc: UpstreamError,
        oauth_error: str | None,
    ) -> None:
        """Revoke the request's grant and announce it, unless that happened already.

        The grant store may have revoked it while refreshing, and then the
        error carries the grant and the cause. ``GrantRevoked`` is published
        once, by the request that ended the grant, so a grant that ended
        elsewhere is not announced again.
        """
        revoked: Grant | None = None
        revocation_reason = ID_TOKEN_REJECTED
        if isinstance(exc, GrantEndedError):
            revocation_reason = exc.revocation_reason
            revoked = exc.claim_revoked()
            if revoked is not None and revoked.grant_id != principal.grant_id:
                # This request waited for another grant's failed exchange.
                # That grant is announced here, and this one ends as well.
                await self._announce(ctx, revoked, revocation_reason, oauth_error)
                revoked = None
        if revoked is None:
            revoked = await ctx.runtime.grants.revoke(principal.grant_id)
        if revoked is not None:
            await self._announce(ctx, revoked, revocation_reason, oauth_error)

    async def _announce(
        self,
        ctx: RequestContext,
        grant: Grant,
        revocation_reason: str,
        oauth_error: str | None,
    ) -> None:
        log.info(
            "exchange.grant_revoked",
            request_id=ctx.request_id,
            backend=ctx.backend_name,
            client_id=grant.client_id,
            user_sub=grant.user_sub,
            reason=revocation_reason,
        )
        await announce_revoked(
            ctx.runtime,
            grant,
            reason=revocation_reason,
            stage=self.name,
            oauth_error=oauth_error,
        )


def _failure_response(
    ctx: RequestContext, exc: UpstreamError, step: str, oauth_error: str | None
) -> GatewayResponse:
    """Build the response to an exchange failure, as the stage docstring describes."""
    reason = exc.reason
    explanation = _EXPLANATIONS.get(reason, "the token exchange was refused")
    message = (
        f"Backend credentials for {ctx.backend_name!r} could not be obtained: "
        f"{explanation}"
    )
    data: dict[str, Any] = {"backend": ctx.backend_name, "step": step}
    if oauth_error is not None:
        data["oauth_error"] = oauth_error
        message += f" ({oauth_error})"
    request_id = ctx.message.id if ctx.message is not None else None

    if reason == REAUTHENTICATION_REQUIRED:
        challenge = bearer_challenge(
            ctx.runtime.issuer,
            ctx.backend.path,
            error_description="the sign-in has ended; sign in again",
        )
        return jsonrpc_error_response(
            401,
            request_id,
            UNAUTHORIZED,
            message,
            reason=reason,
            data=data,
            headers={"www-authenticate": challenge},
        )

    headers: dict[str, str] = {}
    retry_after = exc.retry_after
    if retry_after is None and reason in _OUTAGES:
        retry_after = DEFAULT_RETRY_AFTER
    if retry_after is not None:
        data["retry_after"] = retry_after
        message += f"; retry in {retry_after} seconds"
    if ctx.message is not None and ctx.message.kind == "request":
        status = 200
    elif retry_after is not None:
        status = 503
        headers["retry-after"] = str(retry_after)
    else:
        status = 502
    return jsonrpc_error_response(
        status,
        request_id,
        EXCHANGE_FAILED,
        message,
        reason=reason,
        data=data,
        headers=headers,
    )


def _auth_kind(ctx: RequestContext) -> str:
    tag = ctx.backend.auth.__struct_config__.tag
    return tag if isinstance(tag, str) else type(ctx.backend.auth).__name__


async def _discard(response: GatewayResponse) -> None:
    """Finish a response that will not be sent, so its callbacks still run."""
    outcome = StreamOutcome(
        completed=False, bytes_sent=0, error="discarded: retried after backend 401"
    )
    for callback in response.on_close:
        await callback(outcome)
