"""The OAuth front door's route handlers, ready to add to the Litestar app."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, Router, route
from litestar.middleware import DefineMiddleware

from gateway.oauth.authorize import authorize, consent
from gateway.oauth.callback import callback
from gateway.oauth.cors import (
    CorsHeadersMiddleware,
    is_origin_allowed,
    preflight_headers,
)
from gateway.oauth.exception_handlers import oauth_exception_handlers
from gateway.oauth.flow import MAX_FORM_BYTES
from gateway.oauth.metadata import (
    AS_METADATA_PATH,
    PRM_PATH,
    get_authorization_server_metadata,
    get_jwks,
    get_path_authorization_server_metadata,
    get_resource_metadata,
    get_root_resource_metadata,
)
from gateway.oauth.register import register_client
from gateway.oauth.revocation import revoke
from gateway.oauth.token import token

if TYPE_CHECKING:
    from litestar.types import Middleware

    from gateway.runtime import Runtime

OAUTH_PATHS = [
    PRM_PATH,
    f"{PRM_PATH}/{{backend_path:path}}",
    AS_METADATA_PATH,
    f"{AS_METADATA_PATH}/{{issuer_path:path}}",
    "/oauth2/register",
    "/oauth2/authorize",
    "/oauth2/consent",
    "/oauth2/callback",
    "/oauth2/token",
    "/oauth2/revoke",
    "/oauth2/jwks",
]


@route(OAUTH_PATHS, http_method=["OPTIONS"], sync_to_thread=False)
def preflight(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Respond to a CORS preflight: 204 for an allowed origin, 403 for others."""
    runtime: Runtime = request.app.state.runtime
    origin = request.headers.get("origin")
    if origin is None:
        return Response(b"", status_code=204, headers={"allow": "GET, POST, OPTIONS"})
    server = runtime.config.server
    if not is_origin_allowed(
        origin, allowed_origins=server.allowed_origins, public_url=server.public_url
    ):
        return Response(b"", status_code=403, media_type="text/plain")
    return Response(b"", status_code=204, headers=preflight_headers(origin))


def create_oauth_handlers(*, middleware: Sequence[Middleware] = ()) -> list[Any]:
    """Return the OAuth endpoints as one Litestar router at ``/``.

    Every endpoint gets CORS headers for allowed origins, and RFC 6749 errors
    for exceptions its handler does not catch. Handlers read the ``Runtime``
    from ``app.state.runtime``. The app should also get
    :func:`~gateway.oauth.exception_handlers.oauth_exception_handlers`, so
    that unknown paths and methods get JSON errors too.

    Args:
        middleware: Extra middleware for every OAuth endpoint, run inside the
            CORS middleware; this is where a rate limiter goes.
    """
    return [
        Router(
            path="/",
            # The preflight handler comes first: Litestar adds its own OPTIONS
            # handler to a path whose first registered handlers lack one.
            route_handlers=[
                preflight,
                get_resource_metadata,
                get_root_resource_metadata,
                get_authorization_server_metadata,
                get_path_authorization_server_metadata,
                get_jwks,
                register_client,
                authorize,
                consent,
                callback,
                token,
                revoke,
            ],
            middleware=[DefineMiddleware(CorsHeadersMiddleware), *middleware],
            exception_handlers=oauth_exception_handlers(),
            # No OAuth endpoint accepts a larger body, so Litestar stops
            # reading at this size instead of at its default of 10 MB.
            request_max_body_size=MAX_FORM_BYTES,
        )
    ]
