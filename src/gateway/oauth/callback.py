"""``GET /oauth2/callback``: the IdP sends the user back to the gateway here."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request, Response, get
from litestar.datastructures import Cookie

from gateway.errors import ExchangeError, UpstreamError
from gateway.events import UserRef, UserSignedIn
from gateway.oauth.consents import CONSENT_MEMORY_TTL, ConsentStore
from gateway.oauth.consents import cookie_name as consent_cookie_name
from gateway.oauth.flow import agent_ref, client_redirect, refuse_page, reject
from gateway.oauth.grants import Grant
from gateway.oauth.sign_in_cookie import browser_matches, cleared_sign_in_cookie
from gateway.oauth.transactions import FlowState, UpstreamTransaction
from gateway.oauth.upstream_clients import (
    UnknownUpstreamClientError,
    upstream_clients,
)

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

    The browser must send the sign-in cookie that the redirect to the IdP
    set (:mod:`gateway.oauth.sign_in_cookie`). Without it the ``state`` is
    used up and an error page is shown, not a redirect to the client, with
    ``AuthorizationRejected`` reason ``sign_in_other_browser``.

    An approval given on the consent page is remembered for the signed-in
    user, and the browser gets a cookie naming that user. When a remembered
    approval skipped the page but another user signed in, the sign-in is
    rejected with ``access_denied`` and the browser's cookie is cleared.
    """
    runtime: Runtime = request.app.state.runtime
    state = request.query_params.get("state", "")
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
    if browser_matches(
        request.cookies, runtime.issuer, state, transaction.browser_hash
    ):
        response = await _complete(runtime, request, transaction)
    else:
        response = await refuse_page(
            runtime,
            "Request refused",
            "This sign-in was not started in this browser. "
            "Start the sign-in again from your application.",
            reason="sign_in_other_browser",
            stage=_STAGE,
            client_id=transaction.request.client_id,
            status=403,
        )
    response.cookies.append(cleared_sign_in_cookie(runtime.issuer, state))
    return response


async def _complete(
    runtime: Runtime, request: Request[Any, Any, Any], transaction: UpstreamTransaction
) -> Response[bytes]:
    """Redeem the IdP's code and redirect to the client; see :func:`callback`."""
    params = request.query_params
    auth_request = transaction.request
    iss = params.get("iss")
    problem = response_issuer_problem(
        iss, runtime.upstream.issuer, iss is None and await _iss_advertised(runtime)
    )
    if problem is not None:
        return await reject(
            runtime,
            auth_request,
            "server_error",
            "the identity provider response came from an unexpected issuer"
            if problem == "upstream_issuer_mismatch"
            else "the identity provider response has no iss, which it promises",
            reason=problem,
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
        # The client that started the sign-in redeems the code, so the ID
        # token's aud is that client.
        client = upstream_clients(runtime).get(auth_request.upstream_client_id)
        claims, tokens = await client.exchange_code(
            code, transaction.code_verifier, nonce=transaction.nonce
        )
    except UnknownUpstreamClientError as exc:
        log.warning("oauth.upstream_client_unknown", error=str(exc))
        return await reject(
            runtime,
            auth_request,
            "server_error",
            "the upstream client of this sign-in is no longer configured",
            reason="upstream_client_unknown",
            outcome="error",
            stage=_STAGE,
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

    consents = ConsentStore(runtime.store)
    cookie_name = consent_cookie_name(runtime.issuer)
    browser_id = request.cookies.get(cookie_name)
    if auth_request.remembered_user_sub is not None and (
        auth_request.remembered_user_sub != claims["sub"]
        or auth_request.remembered_user_iss != runtime.upstream.issuer
    ):
        # The page was skipped for the user who approved the client in this
        # browser, but someone else signed in; that user never consented.
        await consents.forget_browser(browser_id)
        response = await reject(
            runtime,
            auth_request,
            "access_denied",
            "the user who signed in is not the one who approved this client "
            "in this browser; start the sign-in again to see the consent page",
            reason="consent_user_mismatch",
            stage=_STAGE,
        )
        response.cookies.append(_consent_cookie(runtime, cookie_name, "", 0))
        return response

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
        upstream_client_id=auth_request.upstream_client_id,
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
        upstream_client_id=client.client_id,
    )
    await runtime.publish(
        UserSignedIn(
            stage=_STAGE,
            user=UserRef(iss=grant.user_iss, sub=grant.user_sub),
            agent=agent_ref(auth_request),
            backend=auth_request.backend,
            client_id=grant.client_id,
            grant_id=grant.grant_id,
            upstream_client_id=client.client_id,
        )
    )
    response = client_redirect(runtime, auth_request, {"code": code})
    if auth_request.consent_approved:
        new_browser_id = await consents.remember(
            user_iss=grant.user_iss,
            user_sub=grant.user_sub,
            client_id=grant.client_id,
            backend=auth_request.backend,
            browser_id=browser_id,
            scopes=auth_request.scopes,
        )
        response.cookies.append(
            _consent_cookie(runtime, cookie_name, new_browser_id, CONSENT_MEMORY_TTL)
        )
    return response


def response_issuer_problem(
    iss: str | None, issuer: str, advertised: bool
) -> str | None:
    """Return why an authorization response's ``iss`` is unacceptable, or None.

    RFC 9207 section 2.4: ``iss`` must equal the IdP's issuer, and it may be
    absent only when the IdP's metadata does not set
    ``authorization_response_iss_parameter_supported`` (``advertised``).

    Returns:
        ``upstream_issuer_missing``, ``upstream_issuer_mismatch`` or None.
    """
    if iss is None:
        return "upstream_issuer_missing" if advertised else None
    return None if iss == issuer else "upstream_issuer_mismatch"


async def _iss_advertised(runtime: Runtime) -> bool:
    """Return whether the IdP's metadata promises ``iss`` in its responses."""
    try:
        document = await runtime.upstream.metadata()
    except UpstreamError:
        # The code exchange needs the same metadata, so it fails as well and
        # the sign-in does not complete.
        return False
    return document.get("authorization_response_iss_parameter_supported") is True


def _consent_cookie(runtime: Runtime, name: str, value: str, max_age: int) -> Cookie:
    # Path "/" because the __Host- prefix requires it and the cookie must
    # reach /oauth2/authorize; SameSite=Lax because the browser arrives at
    # authorize by a navigation from the client's site.
    return Cookie(
        key=name,
        value=value,
        path="/",
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=runtime.issuer.startswith("https://"),
    )
