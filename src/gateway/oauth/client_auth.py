"""Client authentication at the token and revocation endpoints.

A public client names itself with ``client_id`` alone. A confidential client
sends its secret with HTTP Basic or in the form, not both, or a
``private_key_jwt`` client assertion. A request is charged to its client's
rate limit only once it has proven the client (:func:`charge_client`).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from litestar import Request

from gateway.oauth.client_metadata import ClientMetadataError, lookup_client
from gateway.oauth.clients import ClientRecord
from gateway.oauth.pre_registered import ClientAssertionError, authenticate_assertion
from gateway.oauth.ratelimit import client_retry_after

if TYPE_CHECKING:
    from gateway.oauth.grants import Grant
    from gateway.runtime import Runtime

__all__ = ["TokenError", "authenticate_client", "charge_client"]

_BASIC_CHALLENGE = {"www-authenticate": 'Basic realm="agent-proxy", charset="UTF-8"'}


class TokenError(Exception):
    """A token request rejected with an RFC 6749 section 5.2 error."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
        grant: Grant | None = None,
        reason: str | None = None,
        upstream_oauth_error: str | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers
        self.grant = grant
        self.reason = reason or error
        self.upstream_oauth_error = upstream_oauth_error


async def authenticate_client(
    runtime: Runtime, request: Request[Any, Any, Any], form: dict[str, str]
) -> ClientRecord:
    """Return the client that sent a token or revocation request.

    A public client names itself with ``client_id``; a confidential one sends
    its secret with HTTP Basic or in the form, not both, or, when it is
    pre-registered for ``private_key_jwt``, a client assertion.

    Raises:
        TokenError: ``invalid_client`` (401) or ``invalid_request``. A 401 to
            a request with an ``Authorization`` header, whatever its scheme,
            carries a ``WWW-Authenticate: Basic`` challenge (RFC 6749 section
            5.2), because Basic is the only scheme the endpoint accepts.
    """
    try:
        return await _authenticate_client(runtime, request, form)
    except TokenError as exc:
        if (
            exc.status == 401
            and exc.headers is None
            and "authorization" in request.headers
        ):
            exc.headers = dict(_BASIC_CHALLENGE)
        raise


async def _authenticate_client(
    runtime: Runtime, request: Request[Any, Any, Any], form: dict[str, str]
) -> ClientRecord:
    if "client_assertion" in form or "client_assertion_type" in form:
        try:
            return await authenticate_assertion(runtime, request, form)
        except ClientAssertionError as exc:
            status = 401 if exc.error == "invalid_client" else 400
            raise TokenError(exc.error, exc.description, status=status) from None
    authorization = request.headers.get("authorization")
    basic = authorization is not None and authorization[:6].lower() == "basic "
    challenge = _BASIC_CHALLENGE if basic else None
    if authorization is not None and not basic:
        raise TokenError(
            "invalid_client", "client authentication must use HTTP Basic", status=401
        )
    if basic:
        assert authorization is not None
        client_id, secret = _decode_basic(authorization[6:])
        if form.get("client_secret") is not None:
            raise TokenError(
                "invalid_request",
                "use one client authentication method, not Basic and the form",
            )
        if form.get("client_id") not in (None, client_id):
            raise TokenError(
                "invalid_request", "client_id differs from the Basic credentials"
            )
    else:
        client_id = form.get("client_id", "")
        secret = form.get("client_secret", "")
    if not client_id:
        raise TokenError("invalid_client", "client_id is missing", status=401)
    try:
        record = await lookup_client(request, client_id)
    except ClientMetadataError as exc:
        raise TokenError(
            "invalid_client", exc.description, status=401, headers=challenge
        ) from None
    if record is None:
        raise TokenError(
            "invalid_client", "unknown client", status=401, headers=challenge
        )
    if record.is_public:
        if secret:
            raise TokenError(
                "invalid_client",
                "this client is public and must not send a client secret",
                status=401,
                headers=challenge,
            )
        return record
    if not secret or not record.check_secret(secret):
        raise TokenError(
            "invalid_client",
            "client authentication failed",
            status=401,
            headers=challenge,
        )
    return record


def charge_client(request: Request[Any, Any, Any], client: ClientRecord) -> None:
    """Take a token from the client's rate-limit bucket; see the module docstring.

    Raises:
        TokenError: ``temporarily_unavailable`` (429) with ``Retry-After``.
    """
    seconds = client_retry_after(request.scope, client.client_id)
    if seconds is not None:
        raise TokenError(
            "temporarily_unavailable",
            f"too many requests from this client; retry after {seconds} s",
            status=429,
            headers={"retry-after": str(seconds)},
            reason="rate_limited",
        )


def _decode_basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise TokenError(
            "invalid_client",
            "the Basic credentials are not valid",
            status=401,
            headers=_BASIC_CHALLENGE,
        ) from None
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise TokenError(
            "invalid_client",
            "the Basic credentials lack a ':'",
            status=401,
            headers=_BASIC_CHALLENGE,
        )
    # RFC 6749 section 2.3.1: both parts are form-encoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)
