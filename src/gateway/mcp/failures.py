"""The response to a request that the backend could not serve."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.mcp.headers import JSON
from gateway.mcp.jsonrpc import INTERNAL_ERROR, encode
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response

if TYPE_CHECKING:
    from gateway.context import RequestContext

MESSAGES = {
    "backend_unavailable": "backend {name} unavailable",
    "backend_timeout": "backend {name} unavailable",
    "backend_invalid_response": "backend {name} returned an invalid response",
    "backend_stream_failed": "backend {name} failed while sending its response",
    "backend_unauthorized": "backend {name} rejected the gateway's credentials",
    "backend_forbidden": "backend {name} refused the request",
    "backend_session_not_found": "backend {name} no longer knows the session",
    "backend_not_found": "backend {name} has no MCP endpoint at its configured URL",
    "backend_rate_limited": "backend {name} is rate limiting requests",
    "backend_rejected": "backend {name} rejected the request",
    "backend_deadline": "backend {name} did not complete the request in time",
    "backend_message_too_large": "backend {name} sent a message over the size limit",
}
GATEWAY_LIMITS = frozenset({"backend_deadline", "backend_message_too_large"})
"""Reasons that are the gateway's own limits, always sent as a JSON-RPC error."""


def failure_response(
    ctx: RequestContext, reason: str, *, retry_after: int | None = None
) -> GatewayResponse:
    """Build the response to a request the backend could not serve.

    A ``tools/call`` gets a result with ``isError`` (so agents treat it as a
    failed tool, not a broken connection), another request a JSON-RPC error
    with ``data.reason``, both with HTTP 200. The gateway's own limits
    (``backend_deadline``, ``backend_message_too_large``) are a JSON-RPC error
    for every method, so that clients can tell them from a tool's failure. A
    notification, response, GET or DELETE gets 502, or 504 for
    ``backend_timeout`` and ``backend_deadline``.
    """
    text = MESSAGES.get(reason, "backend {name} failed").format(name=ctx.backend_name)
    data: dict[str, Any] = {"backend": ctx.backend_name}
    if retry_after is not None:
        data["retry_after"] = retry_after
    message = ctx.message
    if ctx.http_method == "POST" and message is not None and message.kind == "request":
        if message.method == "tools/call" and reason not in GATEWAY_LIMITS:
            result = {"content": [{"type": "text", "text": text}], "isError": True}
            body = encode({"jsonrpc": "2.0", "id": message.id, "result": result})
            return GatewayResponse(
                status=200, headers={"content-type": JSON}, body=body, reason=reason
            )
        return jsonrpc_error_response(
            200, message.id, INTERNAL_ERROR, text, reason=reason, data=data
        )
    status = 504 if reason in ("backend_timeout", "backend_deadline") else 502
    return jsonrpc_error_response(
        status, None, INTERNAL_ERROR, text, reason=reason, data=data
    )
