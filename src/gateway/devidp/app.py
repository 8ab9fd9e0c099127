"""Build the dev IdP as one Litestar application."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware

from gateway.asgi_tracing import ServerSpanMiddleware

from ._http import json_response
from .backend_as import BackendAuthorizationServer
from .keys import SigningKey
from .org import OrgAuthorizationServer
from .settings import DevIdpSettings

__all__ = ["create_devidp_app"]

logger = structlog.get_logger(__name__)

# Token requests are small forms; 64 KiB leaves room for long assertions.
_MAX_BODY_SIZE = 64 * 1024


def create_devidp_app(
    settings: DevIdpSettings,
    *,
    org_key: SigningKey | None = None,
    backend_keys: Mapping[str, SigningKey] | None = None,
    clock: Callable[[], float] = time.time,
) -> Litestar:
    """Return the dev IdP: the org server plus one server per backend.

    Args:
        settings: Users, clients and backends to serve.
        org_key: Key of the org server; a new RSA 2048 key when None.
        backend_keys: Keys of backend servers by backend name; a new key for
            every backend missing here.
        clock: Returns the current time in seconds. Tests pass a movable clock
            to reach expiry without sleeping.

    Returns:
        The app. Its ``state.org`` is the :class:`OrgAuthorizationServer`, whose
        ``rotate_key`` rotates the org signing key in a running dev IdP.
    """
    org_key = org_key or SigningKey.generate()
    org = OrgAuthorizationServer(settings, key=org_key, clock=clock)
    handlers = org.route_handlers()
    given_keys = backend_keys or {}
    for backend in settings.backends:
        server = BackendAuthorizationServer(
            settings,
            backend,
            key=given_keys.get(backend.name) or SigningKey.generate(),
            org_keys=org.public_keys,
            clock=clock,
        )
        handlers.extend(server.route_handlers())

    def log_started() -> None:
        logger.info(
            "devidp.started",
            issuer=settings.issuer,
            backends=[backend.name for backend in settings.backends],
            auto_login=settings.auto_login,
        )

    return Litestar(
        route_handlers=handlers,
        exception_handlers={
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        on_startup=[log_started],
        openapi_config=None,
        logging_config=None,
        request_max_body_size=_MAX_BODY_SIZE,
        state=State({"org": org}),
        middleware=[DefineMiddleware(ServerSpanMiddleware, component="devidp")],
    )


_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Return routing and size errors (404, 405, 413) as JSON."""
    error = _HTTP_ERROR_CODES.get(exc.status_code, "invalid_request")
    body = {"error": error, "error_description": exc.detail}
    return json_response(body, status_code=exc.status_code, headers=exc.headers)


def _unexpected_error(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[bytes]:
    """Log a bug and return an RFC 6749 ``server_error``."""
    logger.exception("devidp.unexpected_error", path=request.url.path)
    body = {"error": "server_error", "error_description": "internal error"}
    return json_response(body, status_code=500)
