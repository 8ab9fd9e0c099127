"""Origin validation and CORS headers for the MCP endpoints.

MCP streamable HTTP requires servers to validate ``Origin`` against DNS
rebinding. Browser clients such as the MCP Inspector also need CORS: a
preflight that lists the MCP request headers, and exposed response headers so
that JavaScript can read ``Mcp-Session-Id`` and ``WWW-Authenticate``. The
origin rule is the one of the OAuth endpoints (:mod:`gateway.oauth.cors`), so
a browser client is either allowed on both or on neither.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.mcp.eras import PARAM_HEADER_PREFIX
from gateway.oauth import cors as oauth_cors

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]{1,128}")

MCP_METHODS = ("GET", "POST", "DELETE", "OPTIONS")
MCP_REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "accept",
    "mcp-protocol-version",
    "mcp-session-id",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "x-mcp-agent",
    "traceparent",
    "tracestate",
)
"""Request headers browsers may send; ``mcp-method`` and ``mcp-name`` are
those of the stateless 2026-07-28 revision."""
EXPOSED_RESPONSE_HEADERS = (
    "Mcp-Session-Id",
    "WWW-Authenticate",
    "Mcp-Protocol-Version",
)
MAX_PARAM_HEADERS = 32
"""``Mcp-Param-*`` headers a preflight may allow at once."""
MAX_AGE_SECONDS = 3600
"""How long browsers may cache a preflight result (Chromium caps it at 7200)."""


class OriginPolicy:
    """Decides which browser origins may call the MCP endpoints.

    Allowed: requests without ``Origin`` (clients that are not browsers),
    loopback origins, the origin of ``server.public_url`` and the origins in
    ``server.allowed_origins``. ``null`` is never allowed.
    """

    def __init__(self, allowed_origins: Sequence[str], public_url: str) -> None:
        self._allowed_origins = tuple(allowed_origins)
        self._public_url = public_url

    def allows(self, origin: str | None) -> bool:
        """Return whether a request with this ``Origin`` header may proceed."""
        if origin is None:
            return True
        return oauth_cors.is_origin_allowed(
            origin, allowed_origins=self._allowed_origins, public_url=self._public_url
        )


def preflight_headers(origin: str, requested: str | None = None) -> dict[str, str]:
    """Return the headers of a 204 response to a CORS preflight from ``origin``.

    Besides :data:`MCP_REQUEST_HEADERS`, the ``Mcp-Param-*`` headers named in
    ``Access-Control-Request-Headers`` (``requested``) are allowed, at most
    :data:`MAX_PARAM_HEADERS` of them: 2026-07-28 clients derive their names
    from tool schemas, so no fixed list can hold them.
    """
    allowed = list(MCP_REQUEST_HEADERS)
    if requested:
        names = [name.strip().lower() for name in requested.split(",")]
        params = [
            name
            for name in names
            if name.startswith(PARAM_HEADER_PREFIX) and _TOKEN.fullmatch(name)
        ]
        allowed.extend(dict.fromkeys(params[:MAX_PARAM_HEADERS]))
    return oauth_cors.preflight_headers(
        origin,
        methods=MCP_METHODS,
        allow_headers=tuple(allowed),
        max_age=MAX_AGE_SECONDS,
    )


def response_headers(origin: str) -> dict[str, str]:
    """Return the CORS headers added to every real response to ``origin``."""
    return oauth_cors.cors_headers(origin, expose=EXPOSED_RESPONSE_HEADERS)
