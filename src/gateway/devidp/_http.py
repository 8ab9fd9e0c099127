"""HTTP helpers shared by the dev IdP endpoints: parameters, errors, responses."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec
from litestar import Request, Response

__all__ = [
    "FORM_MEDIA_TYPE",
    "NO_STORE",
    "OAuthError",
    "Params",
    "error_page",
    "json_response",
    "oauth_error_response",
    "read_form",
    "read_query",
    "redirect",
    "with_query",
]

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""Headers RFC 6749 section 5.1 requires on responses that carry tokens."""

_MAX_PARAMETER_LENGTH = 16 * 1024


class OAuthError(Exception):
    """An RFC 6749 error to return to the client.

    Attributes:
        error: The RFC 6749 (or RFC 8693, RFC 8707) error code.
        description: A sentence for the developer; never contains a token.
        status_code: 400, or 401 for ``invalid_client``.
    """

    def __init__(self, error: str, description: str, *, status_code: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status_code = status_code


class Params:
    """Request parameters that reject repeats, as RFC 6749 section 3.1 requires.

    Empty values count as absent (RFC 6749 section 3.1).
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if value:
                self._values.setdefault(name, []).append(value)

    def get(self, name: str) -> str | None:
        """Return the single value of ``name``, or None when absent.

        Raises:
            OAuthError: ``invalid_request`` when the parameter is repeated.
        """
        values = self._values.get(name)
        if values is None:
            return None
        if len(values) > 1:
            msg = f"the parameter {name!r} must not be repeated"
            raise OAuthError("invalid_request", msg)
        return values[0]

    def require(self, name: str) -> str:
        """Return the single value of ``name``.

        Raises:
            OAuthError: ``invalid_request`` when it is absent or repeated.
        """
        value = self.get(name)
        if value is None:
            msg = f"the parameter {name!r} is missing"
            raise OAuthError("invalid_request", msg)
        return value

    def get_all(self, name: str) -> list[str]:
        """Return every value of ``name``, for parameters that may repeat."""
        return list(self._values.get(name, ()))

    def __contains__(self, name: str) -> bool:
        return name in self._values


def _parse(text: str) -> Params:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        msg = "the parameters are not valid URL-encoded form data"
        raise OAuthError("invalid_request", msg) from exc
    for name, value in pairs:
        if len(value) > _MAX_PARAMETER_LENGTH:
            limit = _MAX_PARAMETER_LENGTH
            msg = f"the parameter {name!r} is longer than {limit} characters"
            raise OAuthError("invalid_request", msg)
    return Params(pairs)


async def read_form(request: Request[Any, Any, Any]) -> Params:
    """Parse an ``application/x-www-form-urlencoded`` request body.

    Raises:
        OAuthError: ``invalid_request`` for another media type or bad encoding.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        msg = f"the request body must be {FORM_MEDIA_TYPE}"
        raise OAuthError("invalid_request", msg)
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = "the request body is not UTF-8"
        raise OAuthError("invalid_request", msg) from exc
    return _parse(text)


def read_query(request: Request[Any, Any, Any]) -> Params:
    """Parse the query string of a request.

    Raises:
        OAuthError: ``invalid_request`` for bad encoding.
    """
    raw = request.scope.get("query_string", b"")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = "the query string is not UTF-8"
        raise OAuthError("invalid_request", msg) from exc
    return _parse(text)


def json_response(
    body: Mapping[str, Any],
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    """Return ``body`` encoded as a JSON response."""
    return Response(
        content=msgspec.json.encode(body),
        status_code=status_code,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def oauth_error_response(error: OAuthError, *, realm: str) -> Response[bytes]:
    """Return the RFC 6749 section 5.2 JSON error response for ``error``."""
    headers = dict(NO_STORE)
    if error.status_code == 401:
        # RFC 9110 section 15.5.2: every 401 carries a challenge.
        headers["WWW-Authenticate"] = f'Basic realm="{realm}"'
    body = {"error": error.error, "error_description": error.description}
    return json_response(body, status_code=error.status_code, headers=headers)


def with_query(url: str, params: Mapping[str, str | None]) -> str:
    """Return ``url`` with ``params`` appended to its query, skipping None values."""
    query = urlencode(
        {name: value for name, value in params.items() if value is not None}
    )
    if not query:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{query}"


def redirect(location: str) -> Response[bytes]:
    """Return a 302 redirect that is never cached."""
    headers = {"Location": location, **NO_STORE}
    return Response(
        content=b"", status_code=302, media_type="text/plain", headers=headers
    )


def error_page(
    request: Request[Any, Any, Any], error: str, description: str
) -> Response[bytes]:
    """Return a 400 error page for an authorization request that cannot redirect.

    Clients asking for JSON get an RFC 6749 style body; browsers get HTML.
    """
    if "application/json" in request.headers.get("accept", ""):
        body = {"error": error, "error_description": description}
        return json_response(body, status_code=400, headers=NO_STORE)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>Sign-in error</title></head><body>"
        f"<h1>Sign-in error: {html.escape(error)}</h1>"
        f"<p>{html.escape(description)}</p></body></html>"
    )
    return Response(
        content=page.encode("utf-8"),
        status_code=400,
        media_type="text/html",
        headers=NO_STORE,
    )
