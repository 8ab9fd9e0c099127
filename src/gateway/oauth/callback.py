"""``GET /oauth2/callback``: the IdP sends the user back to the gateway here."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request, Response, get

from gateway.errors import ExchangeError, UpstreamError
from gateway.events import UserRef, UserSignedIn
from gateway.oauth.flow import agent_ref, client_redirect, refuse_page, reject
from gateway.oauth.grants import Grant
from gateway.oauth.transactions import FlowState

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth")

_STAGE = "oauth.callback"

# IdP errors after which a new attempt by the user may succeed; the client
# gets access_denied for these, and server_error for every other error.
_USER_ERRORS = frozenset(
    {"access_denied", "login_required", "consent_required", "interaction_required"}
)


@get("/oauth2/callback")
async def callback(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Finish the sign-in and send a gateway authorization code to the client.

    The IdP ``state`` names a pending sign-in and works once. On success the
    user's upstream ID token and refresh token are stored in a new grant,
    ``UserSignedIn`` is published, and the browser goes to the client's
    redirect URI with a single-use gateway code, ``state`` and ``iss``
    (RFC 9207). IdP errors reach the client as ``access_denied`` or
    ``server_error`` and publish ``AuthorizationRejected``.
    """
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    state = params.get("state", "")
    transaction = await FlowState(runtime.store).finish_upstream(state)
    if transaction is None:
        return await refuse_page(
            runtime,
            "Sign-in expired",
            "This sign-in has expired or was already completed. "
            "Start the sign-in again from your application.",
            reason="unknown_state",
            stage=_STAGE,
        )
    auth_request = transaction.request
    iss = params.get("iss")
    if iss is not None and iss != runtime.upstream.issuer:
        return await reject(
            runtime,
            auth_request,
            "server_error",
            "the identity provider response came from an unexpected issuer",
            reason="upstream_issuer_mismatch",
            outcome="error",
            stage=_STAGE,
        )
    upstream_error = params.get("error")
    if upstream_error is not None:
        error = "access_denied" if upstream_error in _USER_ERRORS else "server_error"
        return await reject(
            runtime,
            auth_request,
            error,
            f"the identity provider returned {upstream_error[:64]!r}",
            reason=f"upstream_{error}",
            outcome="denied" if error == "access_denied" else "error",
            stage=_STAGE,
        )
    code = params.get("code")
    if not code:
        return await reject(
            runtime,
            auth_request,
            "server_error",
            "the identity provider returned neither a code nor an error",
            reason="upstream_invalid_response",
            outcome="error",
            stage=_STAGE,
        )
    try:
        claims, tokens = await runtime.upstream.exchange_code(
            code, transaction.code_verifier, nonce=transaction.nonce
        )
    except ExchangeError as exc:
        log.warning("oauth.upstream_code_rejected", oauth_error=exc.oauth_error)
        return await reject(
            runtime,
            auth_request,
            "server_error",
            f"the identity provider rejected the sign-in ({exc.oauth_error})",
            reason="upstream_code_rejected",
            outcome="error",
            stage=_STAGE,
        )
    except UpstreamError as exc:
        log.warning("oauth.upstream_sign_in_failed", reason=exc.reason, error=str(exc))
        error = (
            "temporarily_unavailable"
            if exc.reason == "idp_unavailable"
            else "server_error"
        )
        return await reject(
            runtime,
            auth_request,
            error,
            "the sign-in at the identity provider could not be completed",
            reason=exc.reason,
            outcome="error",
            stage=_STAGE,
        )

    now = int(time.time())
    email = claims.get("email")
    # The grant, and every refresh token of it, ends refresh_token_ttl seconds
    # after this sign-in; refreshing does not extend it.
    grant = Grant(
        grant_id=secrets.token_urlsafe(24),
        user_iss=runtime.upstream.issuer,
        user_sub=claims["sub"],
        email=email if isinstance(email, str) else None,
        client_id=auth_request.client_id,
        agent_id=auth_request.agent_id,
        agent_verified=auth_request.agent_verified,
        resource=auth_request.resource,
        scopes=list(auth_request.scopes),
        upstream_id_token=tokens.id_token,
        id_token_expires_at=tokens.id_token_expires_at,
        upstream_refresh_token=tokens.refresh_token,
        created_at=now,
        expires_at=now + runtime.config.signing.refresh_token_ttl,
    )
    await runtime.grants.save(grant)
    code = await FlowState(runtime.store).issue_code(auth_request, grant.grant_id)
    log.info(
        "oauth.user_signed_in",
        client_id=grant.client_id,
        grant_id=grant.grant_id,
        backend=auth_request.backend,
        agent_id=grant.agent_id,
    )
    await runtime.publish(
        UserSignedIn(
            stage=_STAGE,
            user=UserRef(iss=grant.user_iss, sub=grant.user_sub),
            agent=agent_ref(auth_request),
            backend=auth_request.backend,
            client_id=grant.client_id,
            grant_id=grant.grant_id,
        )
    )
    return client_redirect(runtime, auth_request, {"code": code})
