"""CORS for browser-based MCP clients, such as the MCP Inspector.

An origin is allowed when it is a loopback origin (``http://localhost:6274``,
``http://127.0.0.1:*``, ``http://[::1]:*``, or https on those hosts), the
gateway's own origin, or listed in ``server.allowed_origins``. Allowed origins
are echoed in ``Access-Control-Allow-Origin``, never ``*``. Browser
JavaScript sends its OAuth discovery, registration and token requests across
origins, so the OAuth endpoints need this as much as the MCP endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar.enums import ScopeType

from gateway.oauth.redirects import is_loopback_host

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

OAUTH_METHODS = ("GET", "POST", "OPTIONS")
OAUTH_REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "accept",
    "mcp-protocol-version",
)
"""Request headers browsers may send to the OAuth endpoints.

The MCP SDKs send ``MCP-Protocol-Version`` on their discovery requests.
"""

PREFLIGHT_MAX_AGE = 600


def origin_of(url: str) -> str:
    """Return the ``scheme://host[:port]`` origin of a URL, lower-cased."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def is_origin_allowed(
    origin: str, *, allowed_origins: Iterable[str], public_url: str | None = None
) -> bool:
    """Return whether a browser ``Origin`` may call the gateway.

    ``null`` and malformed origins (with user info, a path, a query or a
    fragment) are never allowed.
    """
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError on an invalid port
    except ValueError:
        return False
    if (
        parts.scheme not in ("http", "https")
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        # An origin is scheme, host and port only (RFC 6454); user info
        # such as http://evil.test@localhost would otherwise pass as loopback.
        return False
    if is_loopback_host(parts.hostname):
        return True
    normalized = origin.lower()
    if public_url is not None and normalized == origin_of(public_url):
        return True
    return any(normalized == allowed.rstrip("/").lower() for allowed in allowed_origins)


def cors_headers(origin: str, *, expose: Sequence[str] = ()) -> dict[str, str]:
    """Return the headers of a response to an allowed cross-origin request."""
    headers = {"access-control-allow-origin": origin, "vary": "Origin"}
    if expose:
        headers["access-control-expose-headers"] = ", ".join(expose)
    return headers


def preflight_headers(
    origin: str,
    *,
    methods: Sequence[str] = OAUTH_METHODS,
    allow_headers: Sequence[str] = OAUTH_REQUEST_HEADERS,
    max_age: int = PREFLIGHT_MAX_AGE,
) -> dict[str, str]:
    """Return the headers of a 204 response to an allowed preflight request."""
    return {
        "access-control-allow-origin": origin,
        "access-control-allow-methods": ", ".join(methods),
        "access-control-allow-headers": ", ".join(allow_headers),
        "access-control-max-age": str(max_age),
        "vary": "Origin",
    }


class CorsHeadersMiddleware:
    """ASGI middleware adding CORS headers to responses for allowed origins.

    The allowed origins come from the ``Runtime`` in the app state, read on
    every request so a reloaded config applies. Requests from other origins
    pass through unchanged: the browser then withholds the response from the
    calling page. Route handlers, not this middleware, respond to preflights.

    Args:
        app: The wrapped ASGI app.
        expose: Response headers that browser JavaScript may read.
    """

    def __init__(self, app: ASGIApp, expose: Sequence[str] = ()) -> None:
        self.app = app
        self.expose = tuple(expose)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the wrapped app, adding CORS headers when the origin is allowed."""
        origin = _header(scope, b"origin") if scope["type"] == ScopeType.HTTP else None
        if origin is None or not _allowed_in_scope(scope, origin):
            await self.app(scope, receive, send)
            return
        extra = [
            (name.encode(), value.encode())
            for name, value in cors_headers(origin, expose=self.expose).items()
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in extra if item[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _allowed_in_scope(scope: Scope, origin: str) -> bool:
    runtime: Any = scope["app"].state.get("runtime")
    if runtime is None:
        return False
    server = runtime.config.server
    return is_origin_allowed(
        origin, allowed_origins=server.allowed_origins, public_url=server.public_url
    )
