"""Sending the MCP endpoint's response, and the response to an internal error."""

from __future__ import annotations

import time

import anyio
import structlog
from opentelemetry.trace import StatusCode

from gateway.mcp.asgi import ASGIReceive, ASGISend, send_body, send_stream
from gateway.mcp.cors import response_headers
from gateway.mcp.jsonrpc import INTERNAL_ERROR
from gateway.mcp.request_checks import Exchange
from gateway.mcp.response import GatewayResponse, StreamOutcome, jsonrpc_error_response
from gateway.mcp.sse import aclose_stream
from gateway.tracing_attributes import STREAM_MS

log = structlog.get_logger("gateway.mcp.response_sending")

GET_NOT_OFFERED_ALLOW = "POST, DELETE"


async def send_response(
    exchange: Exchange,
    response: GatewayResponse,
    receive: ASGIReceive,
    send: ASGISend,
) -> None:
    """Send ``response`` to the client, then run its ``on_close`` callbacks.

    Adds ``X-Request-Id`` and, for an allowed ``Origin``, the CORS headers.
    A 202, or a 2xx without a ``reason`` to a notification or a response,
    is sent as 202 with no body. The callbacks get the outcome of the send, even when
    it failed.
    """
    started = time.perf_counter()
    status = response.status
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in ("content-length", "transfer-encoding", "content-encoding")
    }
    headers["x-request-id"] = exchange.request_id
    if (
        exchange.cors_origin is not None
        and "access-control-allow-origin" not in headers
    ):
        headers.update(response_headers(exchange.cors_origin))
    message = exchange.message
    accepted_message = (
        message is not None
        and message.kind != "request"
        and 200 <= status < 300
        and response.reason is None
    )
    outcome: StreamOutcome | None = None
    try:
        if accepted_message or status == 202:
            status = 202
            headers.pop("content-type", None)
            if response.stream is not None:
                await aclose_stream(response.stream)
            outcome = await send_body(send, status, headers, b"")
        elif response.stream is not None:
            outcome = await send_stream(send, receive, status, headers, response.stream)
        else:
            outcome = await send_body(send, status, headers, response.body)
    finally:
        if outcome is None:
            outcome = StreamOutcome(completed=False, bytes_sent=0, error="send failed")
        exchange.span.set_attribute("http.response.status_code", status)
        exchange.span.set_attribute(
            STREAM_MS, round((time.perf_counter() - started) * 1000, 3)
        )
        await _run_on_close(exchange, response, outcome)


def internal_error(exchange: Exchange) -> GatewayResponse:
    """Log the exception being handled and return the response for it.

    Called from an exception handler. The docstring of
    :class:`gateway.mcp.endpoint.McpEndpoint` lists the response that each
    kind of request gets.
    """
    log.exception(
        "mcp.request_failed",
        request_id=exchange.request_id,
        backend=exchange.backend_name,
        method=exchange.message.method if exchange.message is not None else None,
    )
    exchange.span.set_status(StatusCode.ERROR, "internal_error")
    message = exchange.message
    detail = (
        "Internal error: the gateway failed to handle the request; "
        f"its log has the details under request id {exchange.request_id}"
    )
    if exchange.method == "GET":
        return jsonrpc_error_response(
            405,
            None,
            INTERNAL_ERROR,
            detail,
            reason="internal_error",
            headers={"allow": GET_NOT_OFFERED_ALLOW},
        )
    if message is not None and message.kind == "request":
        return jsonrpc_error_response(
            200, message.id, INTERNAL_ERROR, detail, reason="internal_error"
        )
    # A notification, a response or a DELETE has no id for a JSON-RPC error,
    # and a 2xx would mean that the gateway accepted it.
    return jsonrpc_error_response(
        500, None, INTERNAL_ERROR, detail, reason="internal_error"
    )


async def _run_on_close(
    exchange: Exchange, response: GatewayResponse, outcome: StreamOutcome
) -> None:
    # Each callback runs exactly once, even when an earlier one fails or the
    # request task is being cancelled.
    callbacks, response.on_close = list(response.on_close), []
    with anyio.CancelScope(shield=True):
        for callback in callbacks:
            try:
                await callback(outcome)
            except Exception:
                log.exception(
                    "mcp.on_close_failed",
                    request_id=exchange.request_id,
                    backend=exchange.backend_name,
                )
