"""``POST /oauth2/token``: the ``authorization_code`` and ``refresh_token`` grants.

Public clients identify themselves with ``client_id`` alone. Confidential
clients send their secret with HTTP Basic or in the form. Either method is
accepted whichever one the client registered, but not both in one request.

The per-client rate limit (``oauth.rate_limits.token``, keyed by client id)
is charged only once the request has proven its client: for a confidential
client right after its authentication, for a public client once its code or
refresh token was found valid for it. Over the limit the client gets
``temporarily_unavailable`` with HTTP 429 and ``Retry-After``, and the code
or refresh token stays usable.

Refresh tokens rotate on every use. Presenting a rotated-out one revokes the
whole grant, because a second user of the same refresh token means it was
copied (OAuth 2.1 section 4.3.1).

A refresh also confirms the user's session at the upstream IdP when the last
confirmation is older than ``upstream.recheck_after`` seconds (see
:meth:`GrantStore.recheck_upstream <gateway.oauth.grants.GrantStore.recheck_upstream>`).
When the IdP rejects the upstream refresh token, or returns an ID token for
another user, the grant is revoked and the client gets ``invalid_grant``, so
it signs in again. When the IdP is
unavailable, the grant is kept and the client gets ``temporarily_unavailable``
with HTTP 503 and ``Retry-After``. RFC 6749 defines that code only for the
authorization endpoint; the token endpoint has no code for a retryable
failure, and this one states the cause.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request, Response, post

from gateway.errors import UpstreamError
from gateway.events import (
    AgentRef,
    RefreshTokenReused,
    TokenIssued,
    TokenRequestFailed,
    UserRef,
)
from gateway.oauth import pkce
from gateway.oauth.access_tokens import agent_claim, mint_access_token
from gateway.oauth.client_auth import TokenError, authenticate_client, charge_client
from gateway.oauth.clients import ClientRecord
from gateway.oauth.flow import FormError, read_form
from gateway.oauth.grant_revocation import announce_revoked
from gateway.oauth.grants import UPSTREAM_SUBJECT_CHANGED, Grant, GrantEndedError
from gateway.oauth.resources import backend_for_resource
from gateway.oauth.responses import json_response, oauth_error
from gateway.oauth.transactions import FlowState, RefreshRecord

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth")

UPSTREAM_RETRY_AFTER = 30
"""Seconds sent in ``Retry-After`` when the IdP is unavailable and sent none."""
MAX_UPSTREAM_RETRY_AFTER = 3600
"""Maximum ``Retry-After`` passed on, in seconds, whatever the IdP sent."""


@post("/oauth2/token", status_code=200)
async def token(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Issue an access token and a rotated refresh token.

    Publishes ``TokenIssued``, or ``TokenRequestFailed`` with the OAuth error
    (and ``RefreshTokenReused`` when a rotated-out refresh token came back).
    """
    runtime: Runtime = request.app.state.runtime
    grant_type: str | None = None
    client_id: str | None = None
    try:
        try:
            form = await read_form(request)
        except FormError as exc:
            raise TokenError("invalid_request", str(exc)) from None
        grant_type = form.get("grant_type")
        client_id = form.get("client_id")
        if not grant_type:
            raise TokenError("invalid_request", "grant_type is missing")
        client = await authenticate_client(runtime, request, form)
        client_id = client.client_id
        if not client.is_public:
            charge_client(request, client)
        if grant_type == "authorization_code":
            return await _authorization_code(runtime, request, client, form)
        if grant_type == "refresh_token":
            if "refresh_token" not in client.grant_types:
                raise TokenError(
                    "unauthorized_client",
                    "this client did not register the refresh_token grant",
                )
            return await _refresh_token(runtime, request, client, form)
        raise TokenError(
            "unsupported_grant_type",
            "grant_type must be 'authorization_code' or 'refresh_token'",
        )
    except TokenError as exc:
        await _publish_failure(runtime, exc, client_id=client_id, grant_type=grant_type)
        return oauth_error(
            exc.error, exc.description, status=exc.status, headers=exc.headers
        )


async def _authorization_code(
    runtime: Runtime,
    request: Request[Any, Any, Any],
    client: ClientRecord,
    form: dict[str, str],
) -> Response[bytes]:
    # Every check runs before the code is used up, so a rejected request
    # leaves the code redeemable for the rest of its short lifetime. This
    # includes a code presented by another client or with a wrong
    # code_verifier: without the PKCE verifier a code is useless, so burning
    # it would protect nothing and would let anyone who saw a leaked code
    # cancel the user's sign-in. Only a successful exchange uses the code up.
    # A code used more than once is denied and its tokens are revoked, as
    # RFC 6749 section 4.1.2 requires. Here "used" means exchanged for tokens.
    code = form.get("code")
    verifier = form.get("code_verifier")
    if not code:
        raise TokenError("invalid_request", "code is missing")
    if not verifier:
        raise TokenError(
            "invalid_request", "code_verifier is missing (PKCE is required)"
        )

    flow = FlowState(runtime.store)
    record, replayed_grant = await flow.find_code(code)
    if record is None:
        if replayed_grant is not None:
            raise await _code_replayed(runtime, client, replayed_grant)
        raise TokenError(
            "invalid_grant", "the authorization code is invalid or expired"
        )

    auth_request = record.request
    if auth_request.client_id != client.client_id:
        log.warning(
            "oauth.code_other_client",
            client_id=client.client_id,
            code_client_id=auth_request.client_id,
        )
        raise TokenError(
            "invalid_grant", "the authorization code was issued to another client"
        )
    redirect_uri = form.get("redirect_uri")
    redirect_uri_required = auth_request.redirect_uri_given or redirect_uri is not None
    if redirect_uri_required and redirect_uri != auth_request.redirect_uri:
        raise TokenError(
            "invalid_grant", "redirect_uri differs from the authorization request"
        )
    if not pkce.verify_s256(verifier, auth_request.code_challenge):
        raise TokenError(
            "invalid_grant", "code_verifier does not match the code_challenge"
        )
    _check_resource(runtime, form, auth_request.resource)
    grant = await runtime.grants.get(record.grant_id)
    if grant is None or grant.client_id != client.client_id:
        raise TokenError("invalid_grant", "the sign-in behind this code has ended")
    if client.is_public:
        charge_client(request, client)

    if await flow.redeem_code(code) is None:
        # A concurrent request redeemed the code between the look-up and now.
        raise await _code_replayed(runtime, client, record.grant_id)
    return await _issue(
        runtime, client, grant, grant.scopes, grant.scopes, "authorization_code"
    )


async def _code_replayed(
    runtime: Runtime, client: ClientRecord, grant_id: str
) -> TokenError:
    """Revoke the grant of a code presented after its redemption."""
    grant = await runtime.grants.get(grant_id)
    await runtime.grants.revoke(grant_id)
    log.warning("oauth.code_replayed", client_id=client.client_id, grant_id=grant_id)
    return TokenError(
        "invalid_grant",
        "the authorization code was already used; its tokens are revoked",
        grant=grant,
    )


async def _refresh_token(
    runtime: Runtime,
    request: Request[Any, Any, Any],
    client: ClientRecord,
    form: dict[str, str],
) -> Response[bytes]:
    # A rotated-out token revokes the grant before anything else is checked,
    # because its reuse means it was copied. For a live token every check
    # runs before the token is marked used, so only a successful rotation
    # uses it up and a rejected request can be retried.
    refresh_token = form.get("refresh_token")
    if not refresh_token:
        raise TokenError("invalid_request", "refresh_token is missing")
    flow = FlowState(runtime.store)
    record = await flow.find_refresh_token(refresh_token)
    if record is None or record.client_id != client.client_id:
        raise TokenError("invalid_grant", "the refresh token is invalid or expired")
    if await flow.is_refresh_token_used(refresh_token):
        raise await _refresh_token_reused(runtime, client, record)
    grant = await runtime.grants.get(record.grant_id)
    if grant is None or grant.client_id != client.client_id:
        raise TokenError(
            "invalid_grant", "the sign-in behind this refresh token has ended"
        )
    _check_resource(runtime, form, grant.resource)
    scopes = _narrowed_scopes(form.get("scope"), record.scopes)
    if client.is_public:
        charge_client(request, client)
    grant = await _recheck_upstream(runtime, grant)
    if not await flow.mark_refresh_token_used(refresh_token, record):
        # A concurrent request rotated the token between the check and now.
        raise await _refresh_token_reused(runtime, client, record)
    # RFC 6749 section 6: the new refresh token has the scope of the one
    # presented, so narrowing one access token does not narrow the sign-in.
    return await _issue(runtime, client, grant, scopes, record.scopes, "refresh_token")


async def _recheck_upstream(runtime: Runtime, grant: Grant) -> Grant:
    """Confirm the user's upstream session if due; see the module docstring.

    Raises:
        TokenError: ``invalid_grant`` when the session ended (the grant is
            revoked), or ``temporarily_unavailable`` (503) when the IdP could
            not confirm it (the grant is kept).
    """
    try:
        current = await runtime.grants.recheck_upstream(grant)
    except GrantEndedError as exc:
        revoked = exc.claim_revoked()
        if revoked is not None:
            await announce_revoked(
                runtime,
                revoked,
                reason=exc.revocation_reason,
                stage="oauth.token",
                oauth_error=exc.oauth_error,
            )
        description = (
            "the identity provider refreshed the sign-in for another user; "
            "sign in again"
            if exc.revocation_reason == UPSTREAM_SUBJECT_CHANGED
            else "the user's session at the identity provider has ended; sign in again"
        )
        raise TokenError(
            "invalid_grant",
            description,
            grant=grant,
            reason=exc.revocation_reason,
            upstream_oauth_error=exc.oauth_error,
        ) from None
    except UpstreamError as exc:
        retry_after = min(
            exc.retry_after or UPSTREAM_RETRY_AFTER, MAX_UPSTREAM_RETRY_AFTER
        )
        log.warning(
            "oauth.upstream_recheck_failed",
            grant_id=grant.grant_id,
            client_id=grant.client_id,
            reason=exc.reason,
            retry_after=retry_after,
            error=str(exc),
        )
        raise TokenError(
            "temporarily_unavailable",
            "the identity provider could not confirm the sign-in; "
            f"retry in {retry_after} seconds",
            status=503,
            headers={"retry-after": str(retry_after)},
            grant=grant,
            reason=exc.reason,
            upstream_oauth_error=getattr(exc, "oauth_error", None),
        ) from None
    if current is None:
        raise TokenError(
            "invalid_grant", "the sign-in behind this refresh token has ended"
        )
    return current


async def _refresh_token_reused(
    runtime: Runtime, client: ClientRecord, record: RefreshRecord
) -> TokenError:
    """Revoke the grant of a rotated-out refresh token and publish the reuse."""
    grant = await runtime.grants.get(record.grant_id)
    await runtime.grants.revoke(record.grant_id)
    log.warning(
        "oauth.refresh_token_reused",
        client_id=client.client_id,
        grant_id=record.grant_id,
    )
    await runtime.publish(
        RefreshTokenReused(
            stage="oauth.token",
            user=_user(grant),
            agent=_agent(grant),
            backend=_backend(runtime, grant),
            outcome="denied",
            reason="refresh_token_reused",
            client_id=client.client_id,
            grant_id=record.grant_id,
        )
    )
    return TokenError(
        "invalid_grant",
        "the refresh token was already used; the sign-in is revoked, sign in again",
        grant=grant,
    )


def _narrowed_scopes(requested: str | None, granted: list[str]) -> list[str]:
    """Return the scopes of a refresh: the granted ones, or a requested subset."""
    if requested is None:
        return granted
    narrowed = requested.split()
    if not narrowed or any(scope not in granted for scope in narrowed):
        raise TokenError(
            "invalid_scope",
            "scope must name one or more of the granted scopes: " + " ".join(granted),
        )
    return narrowed


def _check_resource(runtime: Runtime, form: dict[str, str], expected: str) -> None:
    resource = form.get("resource")
    if resource is None:
        return
    target = backend_for_resource(runtime.config, resource)
    if target is None or target[1] != expected:
        raise TokenError(
            "invalid_target",
            f"resource must be {expected}, the resource this sign-in was for",
        )


async def _issue(
    runtime: Runtime,
    client: ClientRecord,
    grant: Grant,
    scopes: list[str],
    refresh_scopes: list[str],
    grant_type: str,
) -> Response[bytes]:
    """Issue an access token and, if the client may refresh, a refresh token.

    The access token carries ``scopes``, the refresh token ``refresh_scopes``.
    """
    signing = runtime.config.signing
    # No access token outlives its grant, which may end early when it has no
    # upstream refresh token (see GrantStore.save).
    ttl = max(1, min(signing.access_token_ttl, grant.expires_at - int(time.time())))
    access_token, claims = mint_access_token(
        runtime.keys,
        issuer=runtime.issuer,
        grant=grant,
        scopes=scopes,
        ttl=ttl,
    )
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": " ".join(scopes),
    }
    if "refresh_token" in client.grant_types:
        expires_at = min(time.time() + signing.refresh_token_ttl, grant.expires_at)
        body["refresh_token"] = await FlowState(runtime.store).issue_refresh_token(
            RefreshRecord(
                grant_id=grant.grant_id,
                client_id=client.client_id,
                scopes=list(refresh_scopes),
                expires_at=expires_at,
            )
        )
    log.info(
        "oauth.token_issued",
        client_id=client.client_id,
        grant_id=grant.grant_id,
        grant_type=grant_type,
        token_id=claims["jti"],
    )
    await runtime.publish(
        TokenIssued(
            stage="oauth.token",
            user=_user(grant),
            agent=_agent(grant),
            backend=_backend(runtime, grant),
            client_id=client.client_id,
            grant_type=grant_type,
            audience=grant.resource,
            token_id=claims["jti"],
        )
    )
    return json_response(body)


async def _publish_failure(
    runtime: Runtime, exc: TokenError, *, client_id: str | None, grant_type: str | None
) -> None:
    # Both values come from the request, so they are cut to a bounded length.
    client_id = client_id[:200] if client_id else None
    grant_type = grant_type[:100] if grant_type else None
    log.info(
        "oauth.token_request_failed",
        client_id=client_id,
        grant_type=grant_type,
        oauth_error=exc.error,
        reason=exc.reason,
        upstream_oauth_error=exc.upstream_oauth_error,
        detail=exc.description,
    )
    await runtime.publish(
        TokenRequestFailed(
            stage="oauth.token",
            user=_user(exc.grant),
            agent=_agent(exc.grant),
            backend=_backend(runtime, exc.grant),
            outcome="error" if exc.status >= 500 else "denied",
            reason=exc.reason,
            client_id=client_id,
            grant_type=grant_type,
            oauth_error=exc.error,
            upstream_oauth_error=exc.upstream_oauth_error,
        )
    )


def _user(grant: Grant | None) -> UserRef | None:
    return UserRef(iss=grant.user_iss, sub=grant.user_sub) if grant else None


def _agent(grant: Grant | None) -> AgentRef | None:
    return AgentRef(**agent_claim(grant)) if grant else None


def _backend(runtime: Runtime, grant: Grant | None) -> str | None:
    if grant is None:
        return None
    target = backend_for_resource(runtime.config, grant.resource)
    return target[0] if target else None
