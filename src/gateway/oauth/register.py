"""``POST /oauth2/register``: RFC 7591 dynamic client registration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from litestar import Request, Response, post

from gateway.events import ClientRegistered
from gateway.oauth.clients import (
    ClientRegistry,
    RegistrationError,
    registration_response,
)
from gateway.oauth.responses import json_response, oauth_error

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth")

MAX_REGISTRATION_BYTES = 16 * 1024


@post("/oauth2/register", status_code=201)
async def register_client(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Register a client from its JSON metadata.

    Returns 201 with the client's id (and secret for a confidential client),
    or 400 with ``invalid_redirect_uri`` or ``invalid_client_metadata``.
    Publishes ``ClientRegistered``.
    """
    runtime: Runtime = request.app.state.runtime
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip()
    if media_type.lower() != "application/json":
        return oauth_error(
            "invalid_client_metadata", "the request body must be application/json"
        )
    body = await request.body()
    if len(body) > MAX_REGISTRATION_BYTES:
        return oauth_error(
            "invalid_client_metadata",
            f"the request body is larger than {MAX_REGISTRATION_BYTES} bytes",
        )
    try:
        metadata = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return oauth_error(
            "invalid_client_metadata", "the request body is not valid JSON"
        )
    except RecursionError:
        # msgspec raises this, not DecodeError, for arrays or objects nested
        # deeper than the interpreter's recursion limit allows.
        return oauth_error(
            "invalid_client_metadata", "the request body is nested too deeply"
        )
    try:
        record, secret = await ClientRegistry(runtime.store).register(
            metadata, ttl=runtime.config.oauth.client_ttl
        )
    except RegistrationError as exc:
        log.info("oauth.registration_rejected", error=exc.error, detail=exc.description)
        return oauth_error(exc.error, exc.description)
    log.info(
        "oauth.client_registered",
        client_id=record.client_id,
        client_name=record.client_name,
        auth_method=record.token_endpoint_auth_method,
    )
    await runtime.publish(
        ClientRegistered(
            stage="oauth.register",
            client_id=record.client_id,
            client_name=record.client_name,
            redirect_uris=record.redirect_uris,
        )
    )
    return json_response(registration_response(record, secret), status=201)
