"""Responses of the OAuth endpoints: JSON, RFC 6749 errors, redirects, HTML."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Response

NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}

# The consent and error pages load nothing, run no script, and refuse to be
# framed, so a hostile site cannot overlay them to trick a click (clickjacking).
_HTML_HEADERS = {
    **NO_STORE,
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not "no-referrer": with it, browsers send "Origin: null" on the consent
    # form's POST, and the consent endpoint checks Origin.
    "referrer-policy": "same-origin",
}

_encoder = msgspec.json.Encoder()

NOT_DESCRIPTION_CHARACTER = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
"""A character outside those RFC 6749 section 5.2 allows in ``error_description``."""


def error_description(text: str) -> str:
    """Percent-encode the characters RFC 6749 forbids in an error description.

    A description may hold printable ASCII except the double quote and the
    backslash, so a value quoted in one (a client name, a path) is
    percent-encoded where it has other characters.
    """
    return NOT_DESCRIPTION_CHARACTER.sub(lambda match: quote(match[0], safe=""), text)


def json_response(
    body: Any,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    cache: str | None = None,
) -> Response[bytes]:
    """Return a JSON response; ``cache`` sets Cache-Control, else ``no-store``."""
    all_headers = {"cache-control": cache} if cache else dict(NO_STORE)
    all_headers.update(headers or {})
    return Response(
        content=_encoder.encode(body),
        status_code=status,
        media_type="application/json",
        headers=all_headers,
    )


def oauth_error(
    error: str,
    description: str,
    *,
    status: int = 400,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """Return an RFC 6749 section 5.2 error response."""
    return json_response(
        {"error": error, "error_description": error_description(description)},
        status=status,
        headers=headers,
    )


def redirect(
    location: str, *, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """Return a 302 redirect that no cache may store."""
    all_headers = {**NO_STORE, "location": location}
    all_headers.update(headers or {})
    return Response(content=b"", status_code=302, headers=all_headers)


def html_response(html: str, *, status: int = 200) -> Response[bytes]:
    """Return an HTML page with headers that forbid framing, scripts and caching."""
    return Response(
        content=html.encode(),
        status_code=status,
        # Litestar appends "; charset=utf-8" to every text/* media type.
        media_type="text/html",
        headers=dict(_HTML_HEADERS),
    )
