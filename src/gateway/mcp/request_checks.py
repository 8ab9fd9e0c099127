"""The MCP endpoint's state of one request, and the checks before its chain.

Every rejection publishes ``RequestRejected`` with the stage :data:`HTTP_STAGE`
and returns a JSON-RPC error response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
from opentelemetry.trace import Span

from gateway.events import RequestRejected
from gateway.mcp.asgi import ASGIReceive, RequestBodyError, read_body
from gateway.mcp.eras import HEADER_MISMATCH, LATEST_STATELESS_VERSION
from gateway.mcp.jsonrpc import INVALID_REQUEST, JsonRpcMessage
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response
from gateway.runtime import Runtime
from gateway.stages.authenticate import (
    MISSING_TOKEN_DETAIL,
    UNAUTHORIZED,
    AuthenticateStage,
    bearer_challenge,
)

HTTP_STAGE = "http"
"""The ``stage`` of events the endpoint publishes before the chain."""
ANONYMOUS_MAX_BODY_BYTES = 64 * 1024
"""Body bytes read from a client without ``Authorization`` before it gets 401."""


@dataclass(slots=True)
class Exchange:
    """The state of one request while the endpoint handles it."""

    request_id: str
    method: str
    headers: dict[str, str]
    header_bytes: int
    backend_name: str | None
    cors_origin: str | None
    span: Span
    duplicated_header: str | None = None
    message: JsonRpcMessage | None = None


async def check_stateless_http(
    runtime: Runtime, exchange: Exchange
) -> GatewayResponse | None:
    """Reject GET and DELETE, absent in 2026-07-28, and repeated headers."""
    if exchange.method != "POST":
        detail = (
            f"Method Not Allowed: {exchange.method} has no meaning in protocol "
            f"{LATEST_STATELESS_VERSION}; send each request as a POST"
        )
        return await reject(
            runtime,
            exchange,
            405,
            "method_not_allowed",
            detail,
            headers={"allow": "POST"},
        )
    if exchange.duplicated_header is not None:
        detail = (
            f"Header mismatch: the {exchange.duplicated_header} header "
            "appears more than once"
        )
        return await reject(
            runtime, exchange, 400, "header_mismatch", detail, code=HEADER_MISMATCH
        )
    return None


async def read_request_body(
    runtime: Runtime, exchange: Exchange, receive: ASGIReceive
) -> bytes | GatewayResponse:
    """Read the POST body, or return the rejection of a body not read whole.

    The whole body must arrive within ``server.body_timeout`` (408). A
    client without an ``Authorization`` header, on a backend whose chain
    authenticates, gets 401 as soon as its body is longer than
    :data:`ANONYMOUS_MAX_BODY_BYTES`, so that an anonymous client cannot
    hold a request open with a slow large upload. Shorter bodies are read
    and parsed, so the ``authenticate`` stage's 401 carries the request id.
    After such an early response, uvicorn (0.55) discards the rest of the
    body as it arrives, so the request holds no application task. The
    response does not ask to close the connection: closing it with unread
    bytes makes the kernel reset it, and the client can lose the response.
    """
    server = runtime.config.server
    limit = server.max_body_bytes
    anonymous = "authorization" not in exchange.headers and _authenticates(
        runtime, exchange
    )
    if anonymous:
        limit = min(limit, ANONYMOUS_MAX_BODY_BYTES)
    failure: RequestBodyError | None = None
    with anyio.move_on_after(server.body_timeout):
        try:
            return await read_body(
                receive, exchange.headers.get("content-length"), limit
            )
        except RequestBodyError as exc:
            failure = exc

    # The rejections are published outside the timeout's cancel scope.
    if failure is None:
        detail = (
            "Request Timeout: the request body did not arrive within "
            f"{server.body_timeout:g} seconds"
        )
        return await reject(runtime, exchange, 408, "body_timeout", detail)
    if anonymous and failure.status == 413:
        return await _reject_anonymous(runtime, exchange)
    return await reject(runtime, exchange, failure.status, failure.reason, str(failure))


def _authenticates(runtime: Runtime, exchange: Exchange) -> bool:
    # A chain without the authenticate stage (an anonymous backend, or a
    # custom stage that authenticates otherwise) needs no Authorization.
    assert exchange.backend_name is not None
    chain = runtime.backends[exchange.backend_name].chain
    return any(isinstance(stage, AuthenticateStage) for stage in chain.stages)


async def _reject_anonymous(runtime: Runtime, exchange: Exchange) -> GatewayResponse:
    assert exchange.backend_name is not None
    backend = runtime.config.backends[exchange.backend_name]
    challenge = bearer_challenge(runtime.issuer, backend.path)
    return await reject(
        runtime,
        exchange,
        401,
        "missing_token",
        f"Unauthorized: {MISSING_TOKEN_DETAIL}",
        code=UNAUTHORIZED,
        headers={"www-authenticate": challenge},
    )


async def reject(
    runtime: Runtime,
    exchange: Exchange,
    status: int,
    reason: str,
    detail: str,
    *,
    code: int = INVALID_REQUEST,
    id: Any = None,
    headers: dict[str, str] | None = None,
    data: dict[str, Any] | None = None,
) -> GatewayResponse:
    """Publish ``RequestRejected`` and return the JSON-RPC error response.

    A status of 401 or 403 is published with the outcome ``denied``, any
    other with ``error``.
    """
    message = exchange.message
    await runtime.publish(
        RequestRejected(
            request_id=exchange.request_id,
            stage=HTTP_STAGE,
            backend=exchange.backend_name,
            method=message.method if message is not None else None,
            outcome="denied" if status in (401, 403) else "error",
            reason=reason,
            status=status,
            detail=detail,
        )
    )
    return jsonrpc_error_response(
        status, id, code, detail, reason=reason, data=data, headers=headers
    )
