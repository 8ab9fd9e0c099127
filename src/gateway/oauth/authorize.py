"""``GET /oauth2/authorize`` and ``POST /oauth2/consent``.

An authorization request is validated in RFC 6749 section 4.1.2.1 order.
Problems with ``client_id`` or ``redirect_uri`` are shown on an error page,
because redirecting to an unverified URI would make the gateway an open
redirector. Every later problem is sent to the client's redirect URI: at
once for a pre-registered client or one whose identity is proven, and for
any other client through a link on an error page, because anyone can
register a client with any redirect URI (RFC 9700 section 4.11.2). An error
after the user acted, such as Deny on the consent page, is always
redirected.

The consent page is bound to the browser that opened it: the form posts a
single-use transaction id, and the browser must also send a SameSite=Strict
cookie set with the page, so a page on another site cannot submit the form
for the user (cross-site request forgery).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie

from gateway.events import AuthorizationRequested, ConsentGranted
from gateway.oauth import pkce
from gateway.oauth.client_metadata import ClientMetadataError, lookup_client
from gateway.oauth.clients import ClientRecord, hash_secret
from gateway.oauth.consents import ConsentStore
from gateway.oauth.consents import cookie_name as consent_cookie_name
from gateway.oauth.cors import origin_of
from gateway.oauth.flow import (
    FormError,
    agent_ref,
    read_form,
    redirect_upstream,
    refuse_page,
    reject,
)
from gateway.oauth.metadata import SUPPORTED_SCOPES
from gateway.oauth.pages import consent_page
from gateway.oauth.redirects import redirect_uri_matches
from gateway.oauth.resources import backend_for_resource
from gateway.oauth.responses import html_response
from gateway.oauth.transactions import CONSENT_TTL, AuthorizationRequest, FlowState
from gateway.oauth.upstream_clients import upstream_clients
from gateway.stages.authorize import known_scopes

if TYPE_CHECKING:
    from litestar.datastructures import MultiDict

    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth")

MAX_PARAMETER_LENGTH = 2000
_RESTART = "Start the sign-in again from your application."
_STAGE = "oauth.authorize"
_CONSENT_STAGE = "oauth.consent"


@get("/oauth2/authorize")
async def authorize(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Validate an authorization request, then show the consent page.

    Pre-approved clients skip the page and go straight to the IdP, and so
    does a browser whose user approved this client for this backend before
    (published as ``ConsentGranted`` with reason ``remembered_consent``).
    The upstream client that will sign the user in is chosen here: a
    verified agent's own client when the agent has one, the gateway's
    otherwise. The log line ``oauth.upstream_client_chosen`` names it.
    Publishes ``AuthorizationRequested``, and ``AuthorizationRejected`` when
    the request is refused after the redirect URI was verified.
    """
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    client_id, problem = _single(params, "client_id")
    if problem or not client_id:
        message = f"{problem or 'client_id is missing'}. {_RESTART}"
        return await refuse_page(
            runtime, "Invalid request", message, reason="invalid_request", stage=_STAGE
        )
    try:
        record = await lookup_client(request, client_id)
    except ClientMetadataError as exc:
        return await refuse_page(
            runtime,
            "Unknown application",
            "The application that sent you here names itself by a client "
            f"metadata document that cannot be used: {exc.description}.",
            reason="invalid_client_metadata",
            stage=_STAGE,
            client_id=client_id,
        )
    if record is None:
        return await refuse_page(
            runtime,
            "Unknown application",
            "The application that sent you here is not registered with this gateway. "
            "It must register again.",
            reason="unknown_client",
            stage=_STAGE,
            client_id=client_id,
        )
    redirect_uri, redirect_uri_given, problem = _redirect_uri(params, record)
    if problem or redirect_uri is None:
        return await refuse_page(
            runtime,
            "Invalid redirect",
            f"{problem}. {_RESTART}",
            reason="invalid_redirect_uri",
            stage=_STAGE,
            client_id=client_id,
        )

    state, problem = _single(params, "state")
    draft = _draft(record, redirect_uri, redirect_uri_given, state or "")
    if problem or not state:
        return await reject(
            runtime,
            draft,
            "invalid_request",
            problem or "state is required",
            reason="invalid_request",
            user_acted=False,
        )
    response_type, problem = _single(params, "response_type")
    if problem or response_type != "code":
        return await reject(
            runtime,
            draft,
            "unsupported_response_type",
            problem or "response_type must be 'code'",
            reason="unsupported_response_type",
            user_acted=False,
        )
    error = _pkce_problem(params)
    if error:
        return await reject(
            runtime,
            draft,
            "invalid_request",
            error,
            reason="invalid_request",
            user_acted=False,
        )
    resources = params.getall("resource", [])
    if len(resources) != 1:
        description = (
            "resource (RFC 8707) is required and names the MCP endpoint URL"
            if not resources
            else "give exactly one resource; a token is for one MCP endpoint"
        )
        return await reject(
            runtime,
            draft,
            "invalid_target",
            description,
            reason="invalid_target",
            user_acted=False,
        )
    target = backend_for_resource(runtime.config, resources[0])
    if target is None:
        return await reject(
            runtime,
            draft,
            "invalid_target",
            f"{resources[0]!r} is not an MCP endpoint of this gateway",
            reason="invalid_target",
            user_acted=False,
        )
    backend, resource = target
    scopes, problem = _requested_scopes(runtime, params, backend)
    if problem:
        return await reject(
            runtime,
            draft,
            "invalid_scope",
            problem,
            reason="invalid_scope",
            user_acted=False,
        )
    login_hint, _ = _single(params, "login_hint")

    agent = runtime.agents.identify(
        client_id=record.client_id,
        client_name=record.client_name,
        authenticated=record.identity_proven,
    )
    auth_request = AuthorizationRequest(
        client_id=record.client_id,
        client_name=record.client_name,
        redirect_uri=redirect_uri,
        redirect_uri_given=redirect_uri_given,
        state=state,
        code_challenge=params.get("code_challenge", ""),
        resource=resource,
        backend=backend,
        scopes=scopes,
        login_hint=login_hint[:MAX_PARAMETER_LENGTH] if login_hint else None,
        agent_id=agent.id,
        agent_verified=agent.verified,
        agent_trust=agent.trust,
        upstream_client_id=upstream_clients(runtime).choose(
            agent.id, verified=agent.verified
        ),
        redirect_trusted=draft.redirect_trusted,
    )
    log.info(
        "oauth.upstream_client_chosen",
        client_id=record.client_id,
        agent_id=agent.id,
        agent_trust=agent.trust,
        upstream_client_id=auth_request.upstream_client_id
        or runtime.upstream.client_id,
        agent_own_client=auth_request.upstream_client_id is not None,
    )
    await runtime.publish(
        AuthorizationRequested(
            stage=_STAGE,
            client_id=record.client_id,
            resource=resource,
            backend=backend,
            agent=agent_ref(auth_request),
        )
    )
    if not runtime.agents.allows_backend(agent.id, backend):
        return await reject(
            runtime,
            auth_request,
            "access_denied",
            _agent_not_allowed(record, agent.id, agent.trust, backend),
            reason="agent_not_allowed",
            user_acted=False,
        )
    if record.pre_approved or client_id in runtime.config.oauth.pre_approved_clients:
        return await redirect_upstream(
            runtime, auth_request, stage=_STAGE, user_acted=False
        )
    remembered = await ConsentStore(runtime.store).remembered_user(
        request.cookies.get(consent_cookie_name(runtime.issuer)),
        client_id=record.client_id,
        backend=backend,
        scopes=auth_request.scopes,
    )
    if remembered is not None:
        auth_request.remembered_user_iss = remembered.user_iss
        auth_request.remembered_user_sub = remembered.user_sub
        await runtime.publish(
            ConsentGranted(
                stage=_STAGE,
                client_id=record.client_id,
                backend=backend,
                agent=agent_ref(auth_request),
                reason="remembered_consent",
            )
        )
        return await redirect_upstream(
            runtime, auth_request, stage=_STAGE, user_acted=False
        )

    transaction, browser_secret = await FlowState(runtime.store).start_consent(
        auth_request
    )
    page = consent_page(
        auth_request, action=f"{runtime.issuer}/oauth2/consent", transaction=transaction
    )
    response = html_response(page)
    response.cookies.append(
        Cookie(
            key=_cookie_name(transaction),
            value=browser_secret,
            path=_cookie_path(runtime),
            max_age=CONSENT_TTL,
            httponly=True,
            samesite="strict",
            secure=runtime.issuer.startswith("https://"),
        )
    )
    return response


@post("/oauth2/consent", status_code=302)
async def consent(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Apply the user's decision from the consent page.

    ``deny`` sends ``access_denied`` to the client and publishes
    ``AuthorizationRejected``; ``approve`` publishes ``ConsentGranted`` and
    redirects the browser to the IdP.
    """
    runtime: Runtime = request.app.state.runtime
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() != origin_of(runtime.issuer):
        return await refuse_page(
            runtime,
            "Request refused",
            "The consent form was submitted from another site.",
            reason="consent_cross_site",
            stage=_CONSENT_STAGE,
            status=403,
        )
    try:
        form = await read_form(request)
    except FormError as exc:
        return await refuse_page(
            runtime,
            "Invalid request",
            f"{exc}. {_RESTART}",
            reason="invalid_request",
            stage=_CONSENT_STAGE,
        )
    transaction = form.get("transaction", "")
    flow = FlowState(runtime.store)
    pending = await flow.peek_consent(transaction)
    if pending is None:
        return await refuse_page(
            runtime,
            "Consent expired",
            f"This consent page has expired or was already used. {_RESTART}",
            reason="consent_expired",
            stage=_CONSENT_STAGE,
        )
    client_id = pending.request.client_id
    cookie = request.cookies.get(_cookie_name(transaction), "")
    if not cookie or hash_secret(cookie) != pending.browser_hash:
        return await refuse_page(
            runtime,
            "Request refused",
            f"This consent page was not opened in this browser. {_RESTART}",
            reason="consent_cross_site",
            stage=_CONSENT_STAGE,
            client_id=client_id,
            status=403,
        )
    decision = form.get("decision")
    if decision not in ("approve", "deny"):
        return await refuse_page(
            runtime,
            "Invalid request",
            "decision must be 'approve' or 'deny'.",
            reason="invalid_request",
            stage=_CONSENT_STAGE,
            client_id=client_id,
        )
    if await flow.finish_consent(transaction) is None:
        return await refuse_page(
            runtime,
            "Consent expired",
            f"This consent page was already used. {_RESTART}",
            reason="consent_expired",
            stage=_CONSENT_STAGE,
            client_id=client_id,
        )
    auth_request = pending.request
    if decision == "deny":
        response = await reject(
            runtime,
            auth_request,
            "access_denied",
            "the user denied access",
            reason="consent_denied",
            stage=_CONSENT_STAGE,
        )
    else:
        await runtime.publish(
            ConsentGranted(
                stage=_CONSENT_STAGE,
                client_id=auth_request.client_id,
                backend=auth_request.backend,
                agent=agent_ref(auth_request),
            )
        )
        auth_request.consent_approved = True
        response = await redirect_upstream(
            runtime, auth_request, stage=_CONSENT_STAGE, user_acted=True
        )
    response.cookies.append(
        Cookie(
            key=_cookie_name(transaction),
            value="",
            path=_cookie_path(runtime),
            max_age=0,
        )
    )
    return response


def _single(params: MultiDict[Any], name: str) -> tuple[str | None, str | None]:
    """Return a parameter's one value, or a problem when it repeats or is too long."""
    values = params.getall(name, [])
    if not values:
        return None, None
    if len(values) > 1:
        return None, f"{name} is given more than once"
    value = str(values[0])
    if len(value) > MAX_PARAMETER_LENGTH:
        return None, f"{name} is longer than {MAX_PARAMETER_LENGTH} characters"
    return value, None


def _requested_scopes(
    runtime: Runtime, params: MultiDict[Any], backend: str
) -> tuple[list[str], str | None]:
    """Return the scopes to grant: ``mcp`` plus the known scopes requested.

    Without ``scope`` the grant has the base scopes only. A scope that no
    ``tool_scopes`` entry of the backend names is rejected with
    ``invalid_scope``, so a token never carries a scope the config does not
    name.
    """
    value, problem = _single(params, "scope")
    if problem:
        return [], problem
    requested = value.split() if value else []
    known = known_scopes(runtime.config.stages, backend)
    unknown = [scope for scope in requested if scope not in known]
    if unknown:
        return [], (
            f"unknown scope {' '.join(unknown)!r} for this resource; "
            f"supported: {' '.join(known)}"
        )
    return list(dict.fromkeys([*SUPPORTED_SCOPES, *requested])), None


def _redirect_uri(
    params: MultiDict[Any], record: ClientRecord
) -> tuple[str | None, bool, str | None]:
    value, problem = _single(params, "redirect_uri")
    if problem:
        return None, False, problem
    if value is None:
        if len(record.redirect_uris) == 1:
            return record.redirect_uris[0], False, None
        return None, False, "redirect_uri is missing"
    if not redirect_uri_matches(record.redirect_uris, value):
        return (
            None,
            True,
            "redirect_uri is not one of the application's registered URIs",
        )
    return value, True, None


def _agent_not_allowed(
    record: ClientRecord, agent_id: str, trust: str, backend: str
) -> str:
    """Describe an agent refusal in terms the user can act on."""
    if trust != "unknown":
        return f"agent {agent_id!r} is not allowed to use backend {backend!r}"
    # No configured agent matched, so the client runs under default_agent.
    # Users know their client by name, not by that internal fallback.
    if record.client_name is None:
        return (
            f"no agent in the gateway config matches the client {record.client_id!r}, "
            f"which registered no client_name, so it may not use backend {backend!r}. "
            "Register the client with the client_name of a configured agent."
        )
    return (
        f"no agent in the gateway config matches the client {record.client_name!r}, "
        f"so it may not use backend {backend!r}. Ask the gateway operator to add "
        "an agent that matches this client_name."
    )


def _pkce_problem(params: MultiDict[Any]) -> str | None:
    method, problem = _single(params, "code_challenge_method")
    challenge, challenge_problem = _single(params, "code_challenge")
    if problem or challenge_problem:
        return problem or challenge_problem
    if method != "S256" or not challenge:
        return "PKCE is required: send code_challenge with code_challenge_method=S256"
    if not pkce.is_valid_challenge(challenge):
        return "code_challenge is not a base64url SHA-256 value (43 characters)"
    return None


def _draft(
    record: ClientRecord, redirect_uri: str, redirect_uri_given: bool, state: str
) -> AuthorizationRequest:
    """Build an authorization request with only what error redirects and events need."""
    return AuthorizationRequest(
        client_id=record.client_id,
        client_name=record.client_name,
        redirect_uri=redirect_uri,
        redirect_uri_given=redirect_uri_given,
        state=state,
        code_challenge="",
        resource="",
        backend="",
        scopes=[],
        agent_id="",
        # The operator configured a pre-registered client's redirect URIs.
        redirect_trusted=record.pre_registered or record.identity_proven,
    )


def _cookie_path(runtime: Runtime) -> str:
    # Behind a proxy that serves the gateway under a path prefix, the browser
    # sees the consent endpoint under that prefix.
    return urlsplit(runtime.issuer).path.rstrip("/") + "/oauth2/consent"


def _cookie_name(transaction: str) -> str:
    return f"consent_{hash_secret(transaction)[:16]}"
