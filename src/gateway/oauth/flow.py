"""Steps shared by the authorize, consent and callback endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import structlog
from litestar import Request, Response

from gateway.errors import UpstreamError
from gateway.events import AgentRef, AuthorizationRejected
from gateway.oauth import pkce
from gateway.oauth.pages import error_page, error_redirect_page
from gateway.oauth.redirects import with_query
from gateway.oauth.responses import error_description, html_response, redirect
from gateway.oauth.sign_in_cookie import sign_in_cookie
from gateway.oauth.transactions import (
    AuthorizationRequest,
    FlowState,
    UpstreamTransaction,
)
from gateway.oauth.upstream_clients import (
    UnknownUpstreamClientError,
    upstream_clients,
)

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth")

_PAGE_STATUS = {"access_denied": 403, "temporarily_unavailable": 503}
"""HTTP status of an error page by OAuth error; 400 for any other error."""

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 100


class FormError(Exception):
    """A form body that cannot be read; the message explains why."""


async def read_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Parse an ``application/x-www-form-urlencoded`` body.

    Raises:
        FormError: Wrong media type, too large, more than
            :data:`MAX_FORM_FIELDS` parameters, not UTF-8 (also inside
            percent-encoding), or a parameter given twice (RFC 6749 section
            3.1 forbids repeating a parameter).
    """
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip()
    if media_type.lower() != "application/x-www-form-urlencoded":
        msg = "the request body must be application/x-www-form-urlencoded"
        raise FormError(msg)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        msg = f"the request body is larger than {MAX_FORM_BYTES} bytes"
        raise FormError(msg)
    if body.count(b"&") >= MAX_FORM_FIELDS:
        msg = f"the request body has more than {MAX_FORM_FIELDS} parameters"
        raise FormError(msg)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        msg = "the request body is not valid UTF-8 form data"
        raise FormError(msg) from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            msg = f"the parameter {name!r} is given more than once"
            raise FormError(msg)
        form[name] = value
    return form


async def refuse_page(
    runtime: Runtime,
    title: str,
    message: str,
    *,
    reason: str,
    stage: str,
    client_id: str | None = None,
    status: int = 400,
) -> Response[bytes]:
    """Publish ``AuthorizationRejected`` and show an error page.

    For errors that must not be sent to the client's redirect URI, because
    that URI is unverified or unknown.
    """
    client_id = client_id[:200] if client_id else None
    log.info("oauth.authorization_rejected", client_id=client_id, reason=reason)
    await runtime.publish(
        AuthorizationRejected(
            stage=stage,
            client_id=client_id,
            outcome="denied",
            reason=reason,
            detail=message,
        )
    )
    return html_response(error_page(title, message), status=status)


def agent_ref(request: AuthorizationRequest) -> AgentRef:
    """Return the event reference of the agent in an authorization request."""
    return AgentRef(
        id=request.agent_id, verified=request.agent_verified, trust=request.agent_trust
    )


def client_redirect_location(
    runtime: Runtime, request: AuthorizationRequest, params: dict[str, str | None]
) -> str:
    """Return the client's redirect URI with ``params``, ``state`` and ``iss``."""
    return with_query(
        request.redirect_uri,
        {**params, "state": request.state or None, "iss": runtime.issuer},
    )


def client_redirect(
    runtime: Runtime, request: AuthorizationRequest, params: dict[str, str | None]
) -> Response[bytes]:
    """Redirect to the client's redirect URI with ``params``, ``state`` and ``iss``."""
    return redirect(client_redirect_location(runtime, request, params))


async def reject(
    runtime: Runtime,
    request: AuthorizationRequest,
    error: str,
    description: str,
    *,
    reason: str,
    outcome: str = "denied",
    stage: str = "oauth.authorize",
    user_acted: bool = True,
) -> Response[bytes]:
    """Publish ``AuthorizationRejected`` and send the error to the client.

    The error goes to the client's redirect URI with a 302, unless the user
    has not acted yet (``user_acted`` False) and the request's redirect URI
    is not trusted (``request.redirect_trusted``). Then the browser gets an
    HTML page that names the error and links to that redirect, so a page
    that sends users to the gateway cannot bounce them on to any URI
    someone registered (RFC 9700 section 4.11.2).
    """
    on_page = not user_acted and not request.redirect_trusted
    log.info(
        "oauth.authorization_rejected",
        client_id=request.client_id,
        backend=request.backend,
        error=error,
        reason=reason,
        delivery="page" if on_page else "redirect",
    )
    await runtime.publish(
        AuthorizationRejected(
            stage=stage,
            client_id=request.client_id,
            resource=request.resource or None,
            backend=request.backend or None,
            agent=agent_ref(request) if request.agent_id else None,
            outcome="error" if outcome == "error" else "denied",
            reason=reason,
            detail=description,
        )
    )
    params: dict[str, str | None] = {
        "error": error,
        "error_description": error_description(description),
    }
    if not on_page:
        return client_redirect(runtime, request, params)
    page = error_redirect_page(
        error,
        description,
        location=client_redirect_location(runtime, request, params),
        client=request.client_name or request.client_id,
    )
    return html_response(page, status=_PAGE_STATUS.get(error, 400))


async def redirect_upstream(
    runtime: Runtime, request: AuthorizationRequest, *, stage: str, user_acted: bool
) -> Response[bytes]:
    """Redirect to the IdP with the gateway's own ``state``, ``nonce`` and PKCE.

    The authorization URL names the upstream client chosen at authorize. The
    redirect sets the sign-in cookie (:mod:`gateway.oauth.sign_in_cookie`)
    that the callback requires. ``user_acted`` is True when the user approved
    on the consent page; :func:`reject` receives it for the errors sent here.
    """
    try:
        client = upstream_clients(runtime).get(request.upstream_client_id)
    except UnknownUpstreamClientError as exc:
        log.warning("oauth.upstream_client_unknown", error=str(exc))
        return await reject(
            runtime,
            request,
            "server_error",
            "the upstream client chosen for this sign-in is no longer configured",
            reason="upstream_client_unknown",
            outcome="error",
            stage=stage,
            user_acted=user_acted,
        )
    verifier = pkce.new_code_verifier()
    nonce = pkce.new_code_verifier()
    state, browser_secret = await FlowState(runtime.store).start_upstream(
        UpstreamTransaction(request=request, nonce=nonce, code_verifier=verifier)
    )
    try:
        url = await client.authorization_url(
            state=state,
            nonce=nonce,
            code_challenge=pkce.s256_challenge(verifier),
            login_hint=request.login_hint,
        )
    except UpstreamError as exc:
        log.warning("oauth.upstream_unavailable", reason=exc.reason, error=str(exc))
        return await reject(
            runtime,
            request,
            "temporarily_unavailable",
            "the identity provider cannot be reached; try again later",
            reason=exc.reason,
            outcome="error",
            stage=stage,
            user_acted=user_acted,
        )
    response = redirect(url)
    response.cookies.append(sign_in_cookie(runtime.issuer, state, browser_secret))
    return response
