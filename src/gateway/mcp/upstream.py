"""The forward stage's request to a backend, and what of its response is relayed.

The request's headers and body are built from scratch, and a request past its
deadline is cancelled. Of a backend's JSON body or JSON-RPC error, only the
body and the headers that the client may see are relayed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from gateway.facts import (
    BACKEND_CREDENTIALS,
    BACKEND_SESSION,
    BackendCredentials,
    BackendSession,
)
from gateway.mcp.cancel import send_cancelled
from gateway.mcp.eras import (
    PARAM_HEADER_PREFIX,
    VERSION_HEADER,
    era_of,
    routing_headers,
)
from gateway.mcp.headers import EVENT_STREAM, JSON
from gateway.mcp.jsonrpc import decode, encode, read_response_envelope
from gateway.mcp.response import GatewayResponse, StreamOutcome
from gateway.mcp.trace_context import with_trace_meta

if TYPE_CHECKING:
    from gateway.context import RequestContext

log = structlog.get_logger("gateway.mcp.upstream")

_POST_ACCEPT = f"{JSON}, {EVENT_STREAM}"
_COPIED_REQUEST_HEADERS = ("last-event-id", "traceparent", "tracestate")


def upstream_headers(
    ctx: RequestContext,
    credentials: BackendCredentials,
    session: BackendSession | None,
) -> dict[str, str]:
    """Build the headers of the request to the backend from scratch.

    ``MCP-Protocol-Version`` is the version agreed with the backend (the
    ``backend_session`` fact's, else the client's). A 2026-07-28 request gets
    ``Mcp-Method`` and ``Mcp-Name`` computed from the body sent, and a
    2026-07-28 client's ``Mcp-Param-*`` headers. Copied from the client:
    ``Last-Event-ID`` and the W3C trace context (replaced by the client
    span's context when tracing records). Added: the backend session id,
    the credential headers, and ``Accept-Encoding: identity`` so that event
    streams are never compressed.
    """
    headers: dict[str, str] = {"accept-encoding": "identity"}
    if ctx.http_method == "POST":
        headers["content-type"] = JSON
        headers["accept"] = _POST_ACCEPT
    elif ctx.http_method == "GET":
        headers["accept"] = EVENT_STREAM
    else:
        headers["accept"] = _POST_ACCEPT
    version = ctx.protocol_version
    if session is not None and session.protocol_version is not None:
        version = session.protocol_version
    if version:
        headers[VERSION_HEADER] = version
    message = ctx.message
    if version is not None and era_of(version) == "stateless" and message is not None:
        if message.method is not None:
            headers.update(routing_headers(message.method, message.params, version))
        if ctx.era == "stateless":
            for name, sent in ctx.headers.items():
                if name.startswith(PARAM_HEADER_PREFIX):
                    headers[name] = sent
    for name in _COPIED_REQUEST_HEADERS:
        value = ctx.headers.get(name)
        if value is not None:
            headers[name] = value
    if session is not None and session.backend_session_id is not None:
        headers["mcp-session-id"] = session.backend_session_id
    for name, value in credentials.headers.items():
        headers[name.lower()] = value
    return headers


def upstream_body(ctx: RequestContext) -> bytes:
    """Return the body to send: the parsed message, encoded again.

    A request or notification carries the current span's trace context in
    ``params._meta`` (see :func:`gateway.mcp.trace_context.with_trace_meta`),
    in both protocol eras, so an MCP server that reads it there, as the
    official SDK does, continues the gateway's trace.

    Stages decide on the parsed message, but a body can hold a key twice
    (``"name"`` of ``tools/call``, or ``"method"``), and msgspec keeps the
    last one while a backend's parser may keep the first. Sending the parsed
    message makes the backend read exactly what the stages checked. Encoding
    costs about 0.3 us for a 160-byte ``tools/call`` and 50 us for a 100 KB
    one (``timeit`` of ``msgspec.json.Encoder.encode`` on a 2-core AMD EPYC).
    """
    if ctx.message is None:
        return ctx.body
    if ctx.message.kind == "response":
        return encode(ctx.message.data)
    return encode(with_trace_meta(ctx.message.data))


def cancel_callback(ctx: RequestContext) -> Callable[[StreamOutcome], Awaitable[None]]:
    """Return an ``on_close`` callback that runs :func:`cancel_upstream`."""

    async def cancel(_outcome: StreamOutcome) -> None:
        await cancel_upstream(ctx)

    return cancel


async def cancel_upstream(ctx: RequestContext) -> None:
    """Send ``notifications/cancelled`` for a request past its deadline.

    Only handshake-era backends get it: in 2026-07-28, closing the
    response stream already cancels the request. It runs after the client
    got its error, is bounded by the backend's ``timeout``, and a failure
    is logged, not raised.
    """
    message = ctx.message
    if message is None or message.kind != "request":
        return
    if message.method == "initialize":
        return
    credentials: BackendCredentials = ctx.fact(BACKEND_CREDENTIALS)
    session: BackendSession | None = ctx.get_fact(BACKEND_SESSION)
    headers = upstream_headers(ctx, credentials, session)
    if era_of(headers.get(VERSION_HEADER)) == "stateless":
        return
    client = ctx.runtime.backends[ctx.backend_name].client
    error = await send_cancelled(
        client,
        headers,
        message.id,
        reason="the gateway's deadline for the request passed",
        timeout=ctx.backend.timeout,
    )
    log.info(
        "backend.request_cancelled",
        request_id=ctx.request_id,
        backend=ctx.backend_name,
        method=ctx.mcp_method,
        error=error,
    )


def relay_backend_error(
    request_id: Any, upstream: httpx.Response, body: bytes
) -> GatewayResponse | None:
    """Return the backend's JSON-RPC error for ``request_id``, if ``body`` is one.

    A backend's JSON-RPC error (unknown tool, invalid params) reaches the
    client with HTTP 200 and the client's own id.
    """
    if media_type_of(upstream) != JSON or read_response_envelope(body) is None:
        return None
    message = decode(body)
    error = message.get("error")
    if not isinstance(error, dict):
        return None
    body = encode({"jsonrpc": "2.0", "id": request_id, "error": error})
    return GatewayResponse(
        status=200, headers={"content-type": JSON}, body=body, reason="backend_rejected"
    )


def relayed_headers(upstream: httpx.Response, media_type: str) -> dict[str, str]:
    """Return the backend's headers that reach the client with a JSON body.

    Only ``Content-Type``. A backend's ``MCP-Protocol-Version`` names the
    version of the gateway-to-backend hop, which differs from the client's
    across an era bridge, so it stays behind.
    """
    return {"content-type": upstream.headers.get("content-type", media_type)}


def media_type_of(upstream: httpx.Response) -> str:
    """Return the backend response's media type, lowercase and without parameters."""
    content_type = str(upstream.headers.get("content-type", ""))
    return content_type.split(";", 1)[0].strip().lower()
