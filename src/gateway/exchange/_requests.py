"""Token requests to an IdP or authorization server, and how responses map to errors.

Every failure becomes one of two exceptions: :class:`~gateway.errors.
ExchangeError` for an OAuth error response or a malformed response, and
:class:`ServerUnavailableError` when the server does not respond usably. Their messages
never contain a request parameter, so no token reaches a log line.
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec

from gateway.errors import ExchangeError, UpstreamError

STEP_TOKEN_EXCHANGE = "token_exchange"
STEP_JWT_BEARER = "jwt_bearer"

DEFAULT_RETRY_AFTER = 30
"""Seconds to suggest to the client when a server gave no ``Retry-After``."""
MAX_RETRY_AFTER = 3600
"""Maximum ``retry_after`` passed on, in seconds, whatever ``Retry-After`` said."""

_MAX_DESCRIPTION = 300
_decoder = msgspec.json.Decoder()

# The reason code a client sees for each OAuth error, per step. An error not
# listed here gets "exchange_failed".
_REASONS = {
    STEP_TOKEN_EXCHANGE: {
        # The IdP no longer accepts the user's ID token: only a new sign-in helps.
        "invalid_grant": "reauthentication_required",
        "insufficient_user_authentication": "reauthentication_required",
        "invalid_target": "invalid_target",
        "unauthorized_client": "unauthorized_client",
        "invalid_client": "invalid_client",
        "invalid_scope": "invalid_scope",
    },
    STEP_JWT_BEARER: {
        # Signing in again does not fix a rejected ID-JAG, because the next
        # call requests a new one anyway.
        "invalid_grant": "invalid_grant",
        "invalid_target": "invalid_target",
        "unauthorized_client": "unauthorized_client",
        "invalid_client": "invalid_client",
        "invalid_scope": "invalid_scope",
    },
}


class ServerUnavailableError(UpstreamError):
    """The IdP or a backend authorization server is unreachable or failing.

    Attributes:
        step: ``token_exchange``, ``jwt_bearer`` or ``upstream_refresh``.
        oauth_error: The OAuth ``error`` code of the 5xx or 429 body, such as
            ``temporarily_unavailable``; None when the server sent none.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        step: str,
        retry_after: int,
        oauth_error: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason, retry_after=retry_after)
        self.step = step
        self.oauth_error = oauth_error


async def post_token_request(
    http: httpx.AsyncClient,
    step: str,
    url: str,
    form: dict[str, str],
    client_auth: httpx.Auth | None,
) -> dict[str, Any]:
    """POST a token request and return the decoded body of a 200 response.

    Raises:
        ExchangeError: An OAuth error response, or one that is neither that
            nor a JSON object.
        ServerUnavailableError: No response, a timeout, 5xx or 429.
    """
    auth = client_auth if client_auth is not None else httpx.USE_CLIENT_DEFAULT
    try:
        response = await http.post(
            url, data=form, auth=auth, headers={"accept": "application/json"}
        )
    except httpx.TimeoutException as exc:
        raise unavailable(step, f"timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise unavailable(step, f"request failed ({type(exc).__name__})") from exc

    status = response.status_code
    try:
        body = _decoder.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if status >= 500 or status == 429:
        error = body.get("error") if isinstance(body, dict) else None
        oauth_error = _clean(error) or None
        what = f"answered HTTP {status}"
        if oauth_error is not None:
            what = f"{what} ({oauth_error})"
        raise unavailable(
            step,
            what,
            retry_after=_retry_after(response.headers.get("retry-after")),
            oauth_error=oauth_error,
        )
    if not isinstance(body, dict):
        raise malformed(step, f"HTTP {status} with a body that is not a JSON object")
    if status == 200:
        return body
    error = body.get("error")
    if not isinstance(error, str) or not error:
        raise malformed(step, f"HTTP {status} without an OAuth error code")
    description = _clean(body.get("error_description"))
    server = server_name(step)
    message = f"{server} returned {error}"
    if description:
        message = f"{message}: {description}"
    raise ExchangeError(
        message,
        oauth_error=error,
        step=step,
        reason=_REASONS[step].get(error, "exchange_failed"),
    )


def server_name(step: str) -> str:
    """Return the name of the server that handles a step, for messages."""
    if step == STEP_TOKEN_EXCHANGE:
        return "the identity provider"
    return "the backend authorization server"


def unavailable(
    step: str,
    what: str,
    *,
    retry_after: int = DEFAULT_RETRY_AFTER,
    oauth_error: str | None = None,
) -> ServerUnavailableError:
    """Return the outage error of a step, with its stable reason code.

    ``oauth_error`` is the code the server sent with its 5xx or 429, if any.
    """
    if step == STEP_TOKEN_EXCHANGE:
        reason = "idp_unavailable"
    else:
        reason = "authorization_server_unavailable"
    return ServerUnavailableError(
        f"{server_name(step)} is unavailable: {what}",
        reason=reason,
        step=step,
        retry_after=retry_after,
        oauth_error=oauth_error,
    )


def malformed(step: str, what: str) -> ExchangeError:
    """Return the error for a response that breaks the protocol."""
    return ExchangeError(
        f"{server_name(step)} returned an invalid response: {what}",
        oauth_error="invalid_response",
        step=step,
        reason="invalid_response",
    )


def _retry_after(value: str | None) -> int:
    """Return seconds from a ``Retry-After`` header, clamped to 1 hour."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    if value.isdigit():
        seconds = int(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        seconds = math.ceil(when.timestamp() - time.time())
    return min(max(seconds, 1), MAX_RETRY_AFTER)


def _clean(value: object) -> str:
    """Return a server's error_description fit for a log line: printable, short."""
    if not isinstance(value, str):
        return ""
    text = "".join(ch if ch.isprintable() else " " for ch in value).strip()
    return text[:_MAX_DESCRIPTION]
