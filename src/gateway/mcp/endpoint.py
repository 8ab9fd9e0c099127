"""The MCP streamable HTTP endpoint of every backend, as a raw ASGI application.

Before a backend's chain runs, the endpoint does what needs no identity:
tracing, the request id, ``Origin`` and CORS, size limits, the method, the
``MCP-Protocol-Version`` header, ``Accept``, the time limit on the body, and
parsing the JSON-RPC envelope once. Every rejection publishes
``RequestRejected``. It then runs the chain and sends its response, streaming
event streams chunk by chunk.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from opentelemetry import trace

from gateway.context import RequestContext
from gateway.mcp.asgi import ASGIReceive, ASGISend, ClientDisconnected
from gateway.mcp.cors import MCP_METHODS, OriginPolicy, preflight_headers
from gateway.mcp.eras import (
    SUPPORTED_VERSIONS,
    UNSUPPORTED_PROTOCOL_VERSION,
    VERSION_HEADER,
    Envelope,
    EnvelopeError,
    duplicated_routing_header,
    era_of,
    read_envelope,
)
from gateway.mcp.headers import EVENT_STREAM, JSON, accepts, read_headers
from gateway.mcp.jsonrpc import (
    INVALID_REQUEST,
    JsonRpcError,
    parse_message,
    shorten,
)
from gateway.mcp.request_checks import (
    Exchange,
    check_stateless_http,
    read_request_body,
    reject,
)
from gateway.mcp.response import GatewayResponse
from gateway.mcp.response_sending import internal_error, send_response
from gateway.mcp.server_span import (
    ServerSpan,
    describe_message,
    describe_request,
    describe_response,
    start_server_span,
)
from gateway.runtime import Runtime
from gateway.tracing_attributes import CLIENT_DISCONNECTED, REQUEST_ID

_tracer = trace.get_tracer("gateway.mcp")

MAX_INITIALIZE_BYTES = 64 * 1024
"""Largest ``initialize`` body: its params are stored for the session's life."""
ALLOW = ", ".join(MCP_METHODS)


class McpEndpoint:
    """Serve the MCP endpoint of every backend in ``runtime.by_path``.

    The path must equal a backend path, or equal it plus a trailing slash.
    Choices that go beyond the MCP specification:

    - ``Accept`` is checked leniently: a POST is rejected with 406 only when
      the header allows neither ``application/json`` nor
      ``text/event-stream``, because some clients send only one of them or no
      header at all. A GET is rejected with 406 when the header does not allow
      ``text/event-stream``. A missing header allows everything.
    - ``MCP-Protocol-Version`` may be absent (the specification then implies
      2025-03-26); a revision not in :data:`SUPPORTED_VERSIONS` gets 400 with
      JSON-RPC error -32022 listing the supported ones. A 2026-07-28 request
      must be a POST (405 otherwise), must not repeat a routing header, and
      its envelope must agree with its headers (400 with -32602 or -32020,
      see :func:`gateway.mcp.eras.read_envelope`).
    - A POST body must arrive within ``server.body_timeout`` (408). Without
      an ``Authorization`` header, on a backend whose chain has the
      ``authenticate`` stage, a body over 64 KiB gets 401 before it is read.
    - An exception from the chain or from these checks is logged with its
      traceback. A POST request gets HTTP 200 with a JSON-RPC error for its
      id (``data.reason`` ``internal_error``), and GET gets 405 so that
      clients carry on without the optional stream. A notification, a
      response or a DELETE gets 500, because no id can carry the error and a
      2xx would mean that the gateway accepted the message.
    - A 2xx response without a ``reason`` to a notification or a response
      means the message was accepted, and is sent as 202 with no body.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(
        self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        """Handle one ASGI HTTP request; other scope types are ignored."""
        if scope["type"] != "http":
            return
        headers, header_bytes = read_headers(scope["headers"])
        duplicated = duplicated_routing_header(scope["headers"])
        method = scope["method"]
        path = scope["path"]
        backend_name = self.runtime.by_path.get(path) or self.runtime.by_path.get(
            path.rstrip("/")
        )

        span = self._start_span(scope, backend_name, headers)
        exchange = Exchange(
            request_id=uuid.uuid4().hex,
            method=method,
            headers=headers,
            header_bytes=header_bytes,
            backend_name=backend_name,
            cors_origin=self._allowed_origin(headers.get("origin")),
            span=span,
            duplicated_header=duplicated,
        )
        span.set_attribute(REQUEST_ID, exchange.request_id)

        try:
            with trace.use_span(span, end_on_exit=False):
                try:
                    response = await self._respond(exchange, receive)
                except ClientDisconnected:
                    span.set_attribute(CLIENT_DISCONNECTED, True)
                    return
                except Exception:
                    response = internal_error(exchange)
                describe_response(span, response)
                await send_response(exchange, response, receive, send)
        finally:
            span.end()

    def _start_span(
        self,
        scope: dict[str, Any],
        backend_name: str | None,
        headers: dict[str, str],
    ) -> ServerSpan:
        # The route is the configured backend path, so a trailing slash in the
        # request does not create a second span name.
        route = (
            self.runtime.config.backends[backend_name].path
            if backend_name
            else scope["path"]
        )
        return start_server_span(_tracer, scope, route, backend_name, headers)

    def _allowed_origin(self, origin: str | None) -> str | None:
        # The config is read per request so that a reloaded config applies.
        if origin is None:
            return None
        server = self.runtime.config.server
        policy = OriginPolicy(server.allowed_origins, server.public_url)
        return origin if policy.allows(origin) else None

    async def _respond(
        self, exchange: Exchange, receive: ASGIReceive
    ) -> GatewayResponse:
        server = self.runtime.config.server
        headers = exchange.headers
        backend_name = exchange.backend_name
        if backend_name is None:
            return await reject(
                self.runtime,
                exchange,
                404,
                "not_found",
                "Not Found: no MCP endpoint here",
            )
        if exchange.header_bytes > server.max_header_bytes:
            detail = (
                f"Request Header Fields Too Large: {exchange.header_bytes} bytes of "
                f"headers, at most {server.max_header_bytes} allowed"
            )
            return await reject(
                self.runtime, exchange, 431, "headers_too_large", detail
            )
        if "origin" in headers and exchange.cors_origin is None:
            detail = f"Forbidden: origin {headers['origin']!r} is not allowed"
            return await reject(self.runtime, exchange, 403, "forbidden_origin", detail)
        if exchange.method == "OPTIONS":
            return _preflight(exchange)
        if exchange.method not in ("POST", "GET", "DELETE"):
            detail = f"Method Not Allowed: {exchange.method}; use {ALLOW}"
            return await reject(
                self.runtime,
                exchange,
                405,
                "method_not_allowed",
                detail,
                headers={"allow": ALLOW},
            )
        version = headers.get(VERSION_HEADER)
        if version is not None and version not in SUPPORTED_VERSIONS:
            detail = (
                f"Bad Request: unsupported protocol version {shorten(version)!r}; "
                f"supported: {', '.join(SUPPORTED_VERSIONS)}"
            )
            return await reject(
                self.runtime,
                exchange,
                400,
                "unsupported_protocol_version",
                detail,
                code=UNSUPPORTED_PROTOCOL_VERSION,
                data={"supported": list(SUPPORTED_VERSIONS), "requested": version},
            )
        stateless = era_of(version) == "stateless"
        if stateless:
            early = await check_stateless_http(self.runtime, exchange)
            if early is not None:
                return early

        body = b""
        envelope: Envelope | None = None
        accept = headers.get("accept")
        if exchange.method == "POST":
            if not (accepts(accept, JSON) or accepts(accept, EVENT_STREAM)):
                detail = f"Not Acceptable: Accept must allow {JSON} or {EVENT_STREAM}"
                return await reject(
                    self.runtime, exchange, 406, "not_acceptable", detail
                )
            read = await read_request_body(self.runtime, exchange, receive)
            if isinstance(read, GatewayResponse):
                return read
            body = read
            try:
                exchange.message = parse_message(body)
            except JsonRpcError as exc:
                reason = (
                    "parse_error" if exc.code != INVALID_REQUEST else "invalid_request"
                )
                return await reject(
                    self.runtime,
                    exchange,
                    400,
                    reason,
                    str(exc),
                    code=exc.code,
                    id=exc.id,
                )
            describe_message(exchange.span, exchange.message)
            if stateless and exchange.message.kind == "response":
                detail = (
                    "Invalid Request: a 2026-07-28 client sends no responses, "
                    "because the server sends it no requests"
                )
                return await reject(
                    self.runtime, exchange, 400, "invalid_request", detail
                )
            if (
                exchange.message.method == "initialize"
                and len(body) > MAX_INITIALIZE_BYTES
            ):
                detail = (
                    f"Invalid Request: initialize of {len(body)} bytes; the gateway "
                    f"keeps its params for the session, so at most "
                    f"{MAX_INITIALIZE_BYTES} bytes are accepted"
                )
                return await reject(
                    self.runtime,
                    exchange,
                    400,
                    "initialize_too_large",
                    detail,
                    id=exchange.message.id,
                )
            if stateless and exchange.message.kind == "request":
                try:
                    envelope = read_envelope(
                        exchange.message.method,
                        exchange.message.params,
                        headers,
                    )
                except EnvelopeError as exc:
                    return await reject(
                        self.runtime,
                        exchange,
                        400,
                        exc.reason,
                        exc.detail,
                        code=exc.code,
                        id=exchange.message.id,
                        data=exc.data,
                    )
        elif exchange.method == "GET" and not accepts(accept, EVENT_STREAM):
            detail = f"Not Acceptable: a GET stream needs Accept: {EVENT_STREAM}"
            return await reject(self.runtime, exchange, 406, "not_acceptable", detail)

        backend = self.runtime.backends[backend_name]
        ctx = RequestContext(
            runtime=self.runtime,
            request_id=exchange.request_id,
            http_method=exchange.method,
            backend_name=backend_name,
            backend=backend.config,
            resource=backend.resource,
            headers=headers,
            body=body,
            message=exchange.message,
            envelope=envelope,
        )
        response = await _run_chain(backend.chain, ctx, receive)
        describe_request(exchange.span, ctx)
        return response


async def _run_chain(
    chain: Callable[[RequestContext], Awaitable[GatewayResponse]],
    ctx: RequestContext,
    receive: ASGIReceive,
) -> GatewayResponse:
    """Run the chain, cancelling it when the client disconnects meanwhile.

    The request body has been read, so the next ASGI message can only be
    ``http.disconnect``. A client that leaves while the backend has not
    answered yet cancels the chain, which closes the upstream request (how a
    2026-07-28 client cancels) instead of letting it run to its end.

    Raises:
        ClientDisconnected: The client left before the chain returned.
    """
    # The watcher is a bare asyncio task that cancels a scope, not a task
    # group: an anyio task group with its cancellation cost about 45 us of
    # CPU per request, this about 10 us. uvicorn serves on asyncio only.
    response: GatewayResponse | None = None
    with anyio.CancelScope() as scope:
        watcher = asyncio.get_running_loop().create_task(
            _cancel_on_disconnect(receive, scope)
        )
        try:
            response = await chain(ctx)
        finally:
            watcher.cancel()
    error = watcher.exception() if watcher.done() and not watcher.cancelled() else None
    if error is not None:
        # receive() failed; like a task group, fail the request with its error.
        raise error
    if response is None:
        raise ClientDisconnected("the client left while the backend was working")
    return response


async def _cancel_on_disconnect(receive: ASGIReceive, scope: anyio.CancelScope) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:
        scope.cancel()
        raise
    scope.cancel()


def _preflight(exchange: Exchange) -> GatewayResponse:
    if exchange.cors_origin is None:
        # Not a browser preflight, so list the methods the endpoint serves.
        return GatewayResponse(status=204, headers={"allow": ALLOW})
    requested = exchange.headers.get("access-control-request-headers")
    headers = preflight_headers(exchange.cors_origin, requested)
    return GatewayResponse(status=204, headers=headers)
