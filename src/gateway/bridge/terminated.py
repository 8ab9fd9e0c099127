"""Serving handshake-era clients from a 2026-07-28 backend.

A handshake-era client opens a session with ``initialize``; a 2026-07-28
backend has no sessions. The gateway holds the whole session itself: it
answers ``initialize`` from the backend's ``server/discover``, and sends each
later request as a self-contained 2026-07-28 request, with the envelope built
from the client's ``initialize`` params and the routing headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import structlog

from gateway.bridge.backend_era import Discovery
from gateway.bridge.derived import adopt_outcome, derived_context
from gateway.bridge.shared import id_key
from gateway.context import RequestContext
from gateway.mcp.eras import (
    HANDSHAKE_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    LATEST_STATELESS_VERSION,
    Envelope,
    as_handshake_result,
    with_envelope,
    without_pushed_capabilities,
)
from gateway.mcp.headers import JSON
from gateway.mcp.jsonrpc import encode
from gateway.mcp.response import GatewayResponse, StreamOutcome, jsonrpc_error_response
from gateway.mcp.sse import aclose_stream, transform_messages
from gateway.sessions import SessionRecord
from pipeline import Next

log = structlog.get_logger("gateway.bridge.terminated")

GET_ALLOW = "POST, DELETE"


def initialize_result(
    params: dict[str, Any], discovery: Discovery, backend_name: str
) -> dict[str, Any]:
    """Build the ``InitializeResult`` the gateway returns for a 2026-07-28 backend.

    The client's requested version is agreed to when it is a handshake
    revision, else the latest one.
    """
    requested = params.get("protocolVersion")
    version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION
    result: dict[str, Any] = {
        "protocolVersion": version,
        "capabilities": without_pushed_capabilities(discovery.capabilities),
        "serverInfo": discovery.server_info or {"name": backend_name, "version": ""},
    }
    if discovery.instructions is not None:
        result["instructions"] = discovery.instructions
    return result


def client_envelope(params: dict[str, Any]) -> Envelope:
    """Return the 2026-07-28 envelope for a client's ``initialize`` params."""
    capabilities = params.get("capabilities")
    info = params.get("clientInfo")
    return Envelope(
        protocol_version=LATEST_STATELESS_VERSION,
        client_capabilities=capabilities if isinstance(capabilities, dict) else {},
        client_info=info if isinstance(info, dict) else None,
    )


class TerminatedSessions:
    """Serve the requests of gateway-held sessions in front of a 2026-07-28 backend.

    - ``ping`` is answered by the gateway; ``notifications/initialized`` and
      other notifications get 202 and stay here, except
      ``notifications/cancelled``, which closes the stream of the request it
      names, the way a 2026-07-28 backend is told to stop.
    - Other requests go to the backend with the envelope and routing headers
      of 2026-07-28 and the client's own id (requests share nothing there,
      so ids cannot collide).
    - GET gets 405 with ``Allow: POST, DELETE``: the backend has no stream.
    """

    def __init__(self) -> None:
        # (gateway session id, request id as JSON) -> the open response stream.
        self._streams: dict[tuple[str, str], AsyncIterator[bytes]] = {}

    async def handle(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        record: SessionRecord,
    ) -> GatewayResponse:
        """Handle one message of a gateway-held session."""
        if ctx.http_method == "GET":
            return jsonrpc_error_response(
                405,
                None,
                -32600,
                f"Method Not Allowed: backend {ctx.backend_name} offers no GET stream",
                reason="get_stream_not_offered",
                headers={"allow": GET_ALLOW},
            )
        message = ctx.message
        assert message is not None
        if message.kind != "request":
            if message.method == "notifications/cancelled":
                await self._cancel(record, message.params.get("requestId"))
            return GatewayResponse(status=202)
        if message.method == "ping":
            body = encode({"jsonrpc": "2.0", "id": message.id, "result": {}})
            return GatewayResponse(
                status=200, headers={"content-type": JSON}, body=body
            )

        envelope = client_envelope(record.initialize_params)
        upstream: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": message.id,
            "method": message.method,
            "params": with_envelope(message.params, envelope),
        }
        sent = derived_context(
            ctx,
            upstream,
            protocol_version=envelope.protocol_version,
            backend_session_id=None,
            envelope=envelope,
        )
        response = await call_next(sent)
        adopt_outcome(ctx, sent)
        relay = response.stream
        response = transform_messages(response, _handshake_message)
        stream = relay
        if stream is None:
            return response
        key = (record.gateway_session_id, id_key(message.id))
        self._streams[key] = stream

        async def forget(_outcome: StreamOutcome) -> None:
            if self._streams.get(key) is stream:
                del self._streams[key]

        response.on_close.append(forget)
        return response

    async def _cancel(self, record: SessionRecord, request_id: Any) -> None:
        stream = self._streams.pop(
            (record.gateway_session_id, id_key(request_id)), None
        )
        if stream is None:
            return
        await aclose_stream(stream)
        log.info("bridge.request_cancelled", backend=record.backend)


def _handshake_message(message: dict[str, Any]) -> dict[str, Any] | None:
    result = message.get("result")
    if "method" in message or not isinstance(result, dict):
        return None
    return {**message, "result": as_handshake_result(result)}


def initialize_response(
    request_id: Any, params: dict[str, Any], discovery: Discovery, backend: str
) -> GatewayResponse:
    """Return the gateway's JSON answer to ``initialize`` for a 2026-07-28 backend."""
    result = initialize_result(params, discovery, backend)
    body = encode({"jsonrpc": "2.0", "id": request_id, "result": result})
    return GatewayResponse(status=200, headers={"content-type": JSON}, body=body)
