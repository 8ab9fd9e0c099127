"""Exception handlers that give the OAuth endpoints RFC 6749 errors, never Litestar's.

The route handlers catch the failures they expect. These handlers cover the
rest, so that no OAuth request gets Litestar's own ``{"status_code": ...}``
body:

- Litestar's client errors (an unknown path, a method not allowed, a body
  over Litestar's size limit, a malformed request) become ``invalid_request``
  with their status, or ``not_found`` for 404 like the metadata endpoints
  return.
- Any other exception is a bug: it is logged with its traceback and becomes
  500 ``server_error``. The response names the request id under which the
  log has the details.

The browser endpoints (authorize, consent, callback) get an HTML error page
instead of JSON, because a person reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from litestar.exceptions import HTTPException

from gateway.oauth.pages import error_page
from gateway.oauth.responses import html_response, oauth_error
from gateway.runtime import current_request_id

if TYPE_CHECKING:
    from litestar import Request, Response
    from litestar.types import ExceptionHandlersMap

log = structlog.get_logger("gateway.oauth")

BROWSER_PATHS = frozenset({"/oauth2/authorize", "/oauth2/consent", "/oauth2/callback"})
"""OAuth endpoints that a browser shows to a person."""

_MAX_DETAIL_LENGTH = 200


def oauth_exception_handlers() -> ExceptionHandlersMap:
    """Return the handlers for a Litestar app or router serving the OAuth endpoints.

    On the router they cover exceptions from route handlers. Unknown paths
    and methods fail before a route is found, so the app needs them too.
    """
    return {Exception: handle_exception}


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Turn an exception that reached Litestar into an RFC 6749 error response."""
    path = request.scope["path"]
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return _client_error(request, exc, path)
    request_id = current_request_id.get()
    log.exception(
        "oauth.unhandled_error",
        method=request.method,
        path=path[:_MAX_DETAIL_LENGTH],
        request_id=request_id,
        error_type=type(exc).__name__,
    )
    where = f" under request id {request_id}" if request_id else ""
    description = (
        f"the gateway failed to handle the request; its log has the details{where}"
    )
    if path in BROWSER_PATHS:
        return html_response(
            error_page("Server error", f"{description}. Try again later."),
            status=500,
        )
    return oauth_error("server_error", description, status=500)


def _client_error(
    request: Request[Any, Any, Any], exc: HTTPException, path: str
) -> Response[Any]:
    status = exc.status_code
    headers: dict[str, str] = {}
    if status == 404:
        error = "not_found"
        description = (
            f"nothing is served at {path[:_MAX_DETAIL_LENGTH]!r}; the OAuth "
            "endpoints are listed at /.well-known/oauth-authorization-server"
        )
    elif status == 405:
        allow = _header(exc, "allow")
        error = "invalid_request"
        description = f"method {request.method} is not allowed here"
        if allow:
            headers["allow"] = allow
            description += f"; use {allow}"
    elif status == 413:
        error = "invalid_request"
        limit = _max_body_size(request)
        description = "the request body is too large" + (
            f"; send at most {limit} bytes" if limit else ""
        )
    else:
        error = "invalid_request"
        description = (
            f"the request is malformed: {str(exc.detail)[:_MAX_DETAIL_LENGTH]}"
        )
    log.info(
        "oauth.request_rejected",
        method=request.method,
        path=path[:_MAX_DETAIL_LENGTH],
        status=status,
        error=error,
        request_id=current_request_id.get(),
    )
    if path in BROWSER_PATHS:
        response = html_response(
            error_page("Invalid request", f"{description}."), status=status
        )
        response.headers.update(headers)
        return response
    return oauth_error(error, description, status=status, headers=headers)


def _max_body_size(request: Request[Any, Any, Any]) -> int | None:
    route_handler = request.scope.get("route_handler")
    resolve = getattr(route_handler, "resolve_request_max_body_size", None)
    return resolve() if resolve is not None else None


def _header(exc: HTTPException, name: str) -> str | None:
    for key, value in (exc.headers or {}).items():
        if key.lower() == name:
            return str(value)
    return None
