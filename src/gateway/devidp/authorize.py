"""The authorization endpoint of the org server: OIDC sign-in with code and PKCE.

Errors about the client or its redirect URI get a 400 page, because redirecting
to an unverified URI would make the IdP an open redirector. Every later error is
sent back to the redirect URI (RFC 6749 section 4.1.2.1). Successful and failed
redirects carry ``iss`` (RFC 9207).

With ``auto_login`` the user named by ``login_hint`` (default ``default_user``)
is signed in without a prompt. Without it the endpoint shows a page with one
button per user, and ``POST /oauth2/v1/authorize/login`` completes the sign-in.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from litestar import Request, Response

from ._grants import GrantStore, SignIn
from ._http import (
    NO_STORE,
    OAuthError,
    Params,
    error_page,
    read_form,
    read_query,
    with_query,
)
from ._http import redirect as redirect_response
from ._store import ExpiringStore, StoreFullError
from .settings import DevClient, DevIdpSettings

__all__ = ["SUPPORTED_SCOPES", "AuthorizationEndpoint"]

logger = structlog.get_logger(__name__)

SUPPORTED_SCOPES = ("openid", "profile", "email", "offline_access")
_S256_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_MAX_STATE_LENGTH = 1024
_LOGIN_PAGE_TTL = 600
_PAGE_HEADERS = {
    **NO_STORE,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}


@dataclass(frozen=True, slots=True)
class _Request:
    """A validated authorization request waiting for a signed-in user."""

    client: DevClient
    redirect_uri: str
    state: str | None
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str


class _RedirectError(Exception):
    """An error to send to the client's redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class AuthorizationEndpoint:
    """``GET /oauth2/v1/authorize`` and its sign-in form.

    Args:
        settings: The dev IdP settings.
        grants: Where issued codes are stored.
        clock: Returns the current time in seconds.
    """

    def __init__(
        self, settings: DevIdpSettings, grants: GrantStore, clock: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._grants = grants
        self._clock = clock
        self._clients = {client.client_id: client for client in settings.clients}
        self._pending: ExpiringStore[_Request] = ExpiringStore(
            max_entries=settings.max_pending_grants, clock=clock
        )

    async def authorize(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Validate an authorization request and sign the user in."""
        try:
            params = read_query(request)
            client = self._client(params)
            redirect_uri = params.require("redirect_uri")
        except OAuthError as exc:
            return _reject_page(request, exc.error, exc.description)
        if redirect_uri not in client.redirect_uris:
            description = "redirect_uri is not registered for this client"
            return _reject_page(request, "invalid_request", description)
        state: str | None = None
        try:
            state = params.get("state")
            auth_request = self._validate(params, client, redirect_uri, state)
            if not self._settings.auto_login:
                if params.get("prompt") == "none":
                    raise _RedirectError("login_required", "the user must sign in")
                return self._login_page(auth_request, params.get("login_hint"))
            user = self._resolve_user(params.get("login_hint"))
            return self._complete(auth_request, user)
        except OAuthError as exc:
            return self._redirect_error(
                client, redirect_uri, state, exc.error, exc.description
            )
        except _RedirectError as exc:
            return self._redirect_error(
                client, redirect_uri, state, exc.error, exc.description
            )

    async def login(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Complete a sign-in that the sign-in page submitted."""
        try:
            params = await read_form(request)
            transaction = params.require("transaction")
        except OAuthError as exc:
            return _reject_page(request, exc.error, exc.description)
        pending = self._pending.pop(transaction)
        if pending is None:
            description = "the sign-in page expired; start the sign-in again"
            return _reject_page(request, "invalid_request", description)
        try:
            if params.get("action") == "cancel":
                raise _RedirectError("access_denied", "the user cancelled the sign-in")
            user = self._resolve_user(params.require("user"))
            return self._complete(pending, user)
        except (OAuthError, _RedirectError) as exc:
            return self._redirect_error(
                pending.client,
                pending.redirect_uri,
                pending.state,
                exc.error,
                exc.description,
            )

    def _client(self, params: Params) -> DevClient:
        client_id = params.require("client_id")
        client = self._clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_request", f"unknown client_id {client_id!r}")
        return client

    def _validate(
        self, params: Params, client: DevClient, redirect_uri: str, state: str | None
    ) -> _Request:
        response_type = params.require("response_type")
        if response_type != "code":
            raise _RedirectError(
                "unsupported_response_type", "response_type must be 'code'"
            )
        scopes = tuple(dict.fromkeys(params.require("scope").split()))
        unknown = [scope for scope in scopes if scope not in SUPPORTED_SCOPES]
        if unknown:
            raise _RedirectError("invalid_scope", f"unknown scopes {unknown!r}")
        if "openid" not in scopes:
            raise _RedirectError("invalid_scope", "scope must include 'openid'")
        if state is None:
            raise _RedirectError("invalid_request", "the parameter 'state' is missing")
        nonce = params.get("nonce")
        for name, value in (("state", state), ("nonce", nonce)):
            if value is not None and len(value) > _MAX_STATE_LENGTH:
                description = f"{name} is longer than {_MAX_STATE_LENGTH} characters"
                raise _RedirectError("invalid_request", description)
        method = params.get("code_challenge_method")
        if method != "S256":
            raise _RedirectError(
                "invalid_request", "PKCE with code_challenge_method=S256 is required"
            )
        challenge = params.require("code_challenge")
        if not _S256_CHALLENGE.match(challenge):
            raise _RedirectError(
                "invalid_request", "code_challenge must be 43 base64url characters"
            )
        return _Request(client, redirect_uri, state, scopes, nonce, challenge)

    def _resolve_user(self, login_hint: str | None) -> str:
        users = self._settings.users
        if login_hint is None:
            return self._settings.default_user
        if login_hint in users:
            return login_hint
        wanted = login_hint.lower()
        for key, user in users.items():
            if user.email.lower() == wanted:
                return key
        raise _RedirectError("access_denied", "login_hint names no known user")

    def _complete(self, pending: _Request, user: str) -> Response[bytes]:
        sign_in = SignIn(
            client_id=pending.client.client_id,
            redirect_uri=pending.redirect_uri,
            scopes=pending.scopes,
            nonce=pending.nonce,
            code_challenge=pending.code_challenge,
            user=user,
            auth_time=int(self._clock()),
        )
        code = self._grants.issue_code(sign_in)
        logger.info(
            "devidp.user_signed_in",
            client_id=sign_in.client_id,
            sub=self._settings.users[user].sub,
            scope=" ".join(sign_in.scopes),
        )
        location = with_query(
            pending.redirect_uri,
            {"code": code, "state": pending.state, "iss": self._settings.issuer},
        )
        return redirect_response(location)

    def _redirect_error(
        self,
        client: DevClient,
        redirect_uri: str,
        state: str | None,
        error: str,
        description: str,
    ) -> Response[bytes]:
        logger.info(
            "devidp.authorization_rejected",
            client_id=client.client_id,
            error=error,
            reason=description,
        )
        params = {
            "error": error,
            "error_description": description,
            "state": state,
            "iss": self._settings.issuer,
        }
        return redirect_response(with_query(redirect_uri, params))

    def _login_page(self, pending: _Request, login_hint: str | None) -> Response[bytes]:
        transaction = secrets.token_urlsafe(24)
        expires_at = self._clock() + _LOGIN_PAGE_TTL
        try:
            self._pending.put(transaction, pending, expires_at=expires_at)
        except StoreFullError as exc:
            raise _RedirectError("temporarily_unavailable", str(exc)) from exc
        buttons = []
        for key, user in self._settings.users.items():
            marker = " autofocus" if login_hint in (key, user.email) else ""
            value = html.escape(key, quote=True)
            buttons.append(
                f"<p><button name='user' value='{value}'{marker}>"
                f"Sign in as {html.escape(user.name)} "
                f"({html.escape(user.email)})</button></p>"
            )
        action = f"{self._settings.issuer}/oauth2/v1/authorize/login"
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<title>Dev IdP sign-in</title></head><body>"
            f"<h1>Sign in to {html.escape(pending.client.client_id)}</h1>"
            f"<form method='post' action='{html.escape(action, quote=True)}'>"
            f"<input type='hidden' name='transaction' value='{transaction}'>"
            f"{''.join(buttons)}"
            "<p><button name='action' value='cancel'>Cancel</button></p>"
            "</form></body></html>"
        )
        return Response(
            content=page.encode("utf-8"),
            status_code=200,
            media_type="text/html",
            headers=_PAGE_HEADERS,
        )


def _reject_page(
    request: Request[Any, Any, Any], error: str, description: str
) -> Response[bytes]:
    """Log a request that cannot be redirected and return its error page."""
    logger.info(
        "devidp.authorization_rejected",
        error=error,
        reason=description,
        path=request.url.path,
    )
    return error_page(request, error, description)
