"""The MCP streamable HTTP endpoint of every backend, as a raw ASGI application.

Before a backend's chain runs, the endpoint does what needs no identity:
tracing, the request id, ``Origin`` and CORS, size limits, the method, the
``MCP-Protocol-Version`` header, ``Accept``, the time limit on the body, and
parsing the JSON-RPC envelope once. Every rejection publishes
``RequestRejected``. It then runs the chain and sends its response, streaming
event streams chunk by chunk.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from gateway.context import RequestContext
from gateway.events import RequestRejected
from gateway.mcp.asgi import (
    ASGIReceive,
    ASGISend,
    ClientDisconnected,
    RequestBodyError,
    read_body,
    send_body,
    send_stream,
)
from gateway.mcp.cors import (
    MCP_METHODS,
    OriginPolicy,
    preflight_headers,
    response_headers,
)
from gateway.mcp.eras import (
    HEADER_MISMATCH,
    LATEST_STATELESS_VERSION,
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
    INTERNAL_ERROR,
    INVALID_REQUEST,
    JsonRpcError,
    JsonRpcMessage,
    parse_message,
    shorten,
)
from gateway.mcp.response import GatewayResponse, StreamOutcome, jsonrpc_error_response
from gateway.mcp.sse import aclose_stream
from gateway.runtime import Runtime
from gateway.stages.authenticate import (
    MISSING_TOKEN_DETAIL,
    UNAUTHORIZED,
    AuthenticateStage,
    bearer_challenge,
)

log = structlog.get_logger("gateway.mcp.endpoint")
_tracer = trace.get_tracer("gateway.mcp")

ALLOW = ", ".join(MCP_METHODS)
GET_NOT_OFFERED_ALLOW = "POST, DELETE"
HTTP_STAGE = "http"
"""The ``stage`` of events the endpoint publishes before the chain."""
ANONYMOUS_MAX_BODY_BYTES = 64 * 1024
"""Body bytes read from a client without ``Authorization`` before it gets 401."""


@dataclass(slots=True)
class _Exchange:
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

        span = self._start_span(method, path, backend_name, headers)
        exchange = _Exchange(
            request_id=uuid.uuid4().hex,
            method=method,
            headers=headers,
            header_bytes=header_bytes,
            backend_name=backend_name,
            cors_origin=self._allowed_origin(headers.get("origin")),
            span=span,
            duplicated_header=duplicated,
        )
        span.set_attribute("gateway.request_id", exchange.request_id)

        try:
            with trace.use_span(span, end_on_exit=False):
                try:
                    response = await self._respond(exchange, receive)
                except ClientDisconnected:
                    span.set_attribute("gateway.client_disconnected", True)
                    return
                except Exception:
                    response = _internal_error(exchange)
                await self._send(exchange, response, receive, send)
        finally:
            span.end()

    def _start_span(
        self,
        method: str,
        path: str,
        backend_name: str | None,
        headers: dict[str, str],
    ) -> Span:
        # The route is the configured backend path, so a trailing slash in the
        # request does not create a second span name.
        route = (
            self.runtime.config.backends[backend_name].path if backend_name else path
        )
        return _tracer.start_span(
            f"{method} {route}",
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "http.route": route,
                "gateway.backend": backend_name or "",
            },
        )

    def _allowed_origin(self, origin: str | None) -> str | None:
        # The config is read per request so that a reloaded config applies.
        if origin is None:
            return None
        server = self.runtime.config.server
        policy = OriginPolicy(server.allowed_origins, server.public_url)
        return origin if policy.allows(origin) else None

    async def _respond(
        self, exchange: _Exchange, receive: ASGIReceive
    ) -> GatewayResponse:
        server = self.runtime.config.server
        headers = exchange.headers
        backend_name = exchange.backend_name
        if backend_name is None:
            return await self._reject(
                exchange, 404, "not_found", "Not Found: no MCP endpoint here"
            )
        if exchange.header_bytes > server.max_header_bytes:
            detail = (
                f"Request Header Fields Too Large: {exchange.header_bytes} bytes of "
                f"headers, at most {server.max_header_bytes} allowed"
            )
            return await self._reject(exchange, 431, "headers_too_large", detail)
        if "origin" in headers and exchange.cors_origin is None:
            detail = f"Forbidden: origin {headers['origin']!r} is not allowed"
            return await self._reject(exchange, 403, "forbidden_origin", detail)
        if exchange.method == "OPTIONS":
            return _preflight(exchange)
        if exchange.method not in ("POST", "GET", "DELETE"):
            detail = f"Method Not Allowed: {exchange.method}; use {ALLOW}"
            return await self._reject(
                exchange, 405, "method_not_allowed", detail, headers={"allow": ALLOW}
            )
        version = headers.get(VERSION_HEADER)
        if version is not None and version not in SUPPORTED_VERSIONS:
            detail = (
                f"Bad Request: unsupported protocol version {shorten(version)!r}; "
                f"supported: {', '.join(SUPPORTED_VERSIONS)}"
            )
            return await self._reject(
                exchange,
                400,
                "unsupported_protocol_version",
                detail,
                code=UNSUPPORTED_PROTOCOL_VERSION,
                data={"supported": list(SUPPORTED_VERSIONS), "requested": version},
            )
        stateless = era_of(version) == "stateless"
        if stateless:
            early = await self._check_stateless_http(exchange)
            if early is not None:
                return early

        body = b""
        envelope: Envelope | None = None
        accept = headers.get("accept")
        if exchange.method == "POST":
            if not (accepts(accept, JSON) or accepts(accept, EVENT_STREAM)):
                detail = f"Not Acceptable: Accept must allow {JSON} or {EVENT_STREAM}"
                return await self._reject(exchange, 406, "not_acceptable", detail)
            read = await self._read_body(exchange, receive)
            if isinstance(read, GatewayResponse):
                return read
            body = read
            try:
                exchange.message = parse_message(body)
            except JsonRpcError as exc:
                reason = (
                    "parse_error" if exc.code != INVALID_REQUEST else "invalid_request"
                )
                return await self._reject(
                    exchange, 400, reason, str(exc), code=exc.code, id=exc.id
                )
            _describe_message(exchange.span, exchange.message)
            if stateless and exchange.message.kind == "request":
                try:
                    envelope = read_envelope(
                        exchange.message.method,
                        exchange.message.params,
                        headers,
                    )
                except EnvelopeError as exc:
                    return await self._reject(
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
            return await self._reject(exchange, 406, "not_acceptable", detail)

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
        return await _run_chain(backend.chain, ctx, receive)

    async def _check_stateless_http(
        self, exchange: _Exchange
    ) -> GatewayResponse | None:
        """Reject GET and DELETE, absent in 2026-07-28, and repeated headers."""
        if exchange.method != "POST":
            detail = (
                f"Method Not Allowed: {exchange.method} has no meaning in protocol "
                f"{LATEST_STATELESS_VERSION}; send each request as a POST"
            )
            return await self._reject(
                exchange, 405, "method_not_allowed", detail, headers={"allow": "POST"}
            )
        if exchange.duplicated_header is not None:
            detail = (
                f"Header mismatch: the {exchange.duplicated_header} header "
                "appears more than once"
            )
            return await self._reject(
                exchange, 400, "header_mismatch", detail, code=HEADER_MISMATCH
            )
        return None

    async def _read_body(
        self, exchange: _Exchange, receive: ASGIReceive
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
        server = self.runtime.config.server
        limit = server.max_body_bytes
        anonymous = "authorization" not in exchange.headers and self._authenticates(
            exchange
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
            return await self._reject(exchange, 408, "body_timeout", detail)
        if anonymous and failure.status == 413:
            return await self._reject_anonymous(exchange)
        return await self._reject(
            exchange, failure.status, failure.reason, str(failure)
        )

    def _authenticates(self, exchange: _Exchange) -> bool:
        # A chain without the authenticate stage (an anonymous backend, or a
        # custom stage that authenticates otherwise) needs no Authorization.
        assert exchange.backend_name is not None
        chain = self.runtime.backends[exchange.backend_name].chain
        return any(isinstance(stage, AuthenticateStage) for stage in chain.stages)

    async def _reject_anonymous(self, exchange: _Exchange) -> GatewayResponse:
        assert exchange.backend_name is not None
        backend = self.runtime.config.backends[exchange.backend_name]
        challenge = bearer_challenge(self.runtime.issuer, backend.path)
        return await self._reject(
            exchange,
            401,
            "missing_token",
            f"Unauthorized: {MISSING_TOKEN_DETAIL}",
            code=UNAUTHORIZED,
            headers={"www-authenticate": challenge},
        )

    async def _reject(
        self,
        exchange: _Exchange,
        status: int,
        reason: str,
        detail: str,
        *,
        code: int = INVALID_REQUEST,
        id: Any = None,
        headers: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> GatewayResponse:
        message = exchange.message
        await self.runtime.publish(
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

    async def _send(
        self,
        exchange: _Exchange,
        response: GatewayResponse,
        receive: ASGIReceive,
        send: ASGISend,
    ) -> None:
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
                outcome = await send_stream(
                    send, receive, status, headers, response.stream
                )
            else:
                outcome = await send_body(send, status, headers, response.body)
        finally:
            if outcome is None:
                outcome = StreamOutcome(
                    completed=False, bytes_sent=0, error="send failed"
                )
            exchange.span.set_attribute("http.response.status_code", status)
            exchange.span.set_attribute(
                "gateway.stream_ms", round((time.perf_counter() - started) * 1000, 3)
            )
            await _run_on_close(exchange, response, outcome)


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
    responses: list[GatewayResponse] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        responses.append(await chain(ctx))
        group.cancel_scope.cancel()
    if not responses:
        raise ClientDisconnected("the client left while the backend was working")
    return responses[0]


def _describe_message(span: Span, message: JsonRpcMessage) -> None:
    if message.method is not None:
        span.set_attribute("mcp.method.name", message.method)
    if message.id is not None:
        span.set_attribute("jsonrpc.request.id", str(message.id))
    if message.tool_name is not None:
        span.set_attribute("gen_ai.tool.name", message.tool_name)


def _preflight(exchange: _Exchange) -> GatewayResponse:
    if exchange.cors_origin is None:
        # Not a browser preflight, so list the methods the endpoint serves.
        return GatewayResponse(status=204, headers={"allow": ALLOW})
    requested = exchange.headers.get("access-control-request-headers")
    headers = preflight_headers(exchange.cors_origin, requested)
    return GatewayResponse(status=204, headers=headers)


def _internal_error(exchange: _Exchange) -> GatewayResponse:
    # Called from an exception handler: logs the exception being handled.
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
    exchange: _Exchange, response: GatewayResponse, outcome: StreamOutcome
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
