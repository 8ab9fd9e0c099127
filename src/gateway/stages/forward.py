"""The ``forward`` stage: send the request to the backend and relay its response."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
import structlog

from gateway.context import RequestContext
from gateway.events import BackendFailed
from gateway.facts import (
    BACKEND_CREDENTIALS,
    BACKEND_SESSION,
    DECISION,
    PRINCIPAL,
    BackendCredentials,
    BackendSession,
)
from gateway.mcp.eras import (
    PARAM_HEADER_PREFIX,
    VERSION_HEADER,
    era_of,
    routing_headers,
)
from gateway.mcp.headers import EVENT_STREAM, JSON
from gateway.mcp.jsonrpc import (
    INTERNAL_ERROR,
    decode,
    encode,
    read_response_envelope,
    same_id,
)
from gateway.mcp.relay import RelayStream
from gateway.mcp.response import SSE_HEADERS, GatewayResponse, jsonrpc_error_response
from gateway.mcp.sse import SseEvent, encode_event
from pipeline import BaseStage, Next

log = structlog.get_logger("gateway.stages.forward")

BACKEND_STATUS = "backend_status"
"""``ctx.attributes`` key: the backend's HTTP status, absent when no response came."""
BACKEND_SESSION_ID = "backend_session_id"
"""``ctx.attributes`` key: the ``Mcp-Session-Id`` response header of the backend."""
BACKEND_CHALLENGE = "backend_www_authenticate"
"""``ctx.attributes`` key: the backend's ``WWW-Authenticate`` on 401 and 403."""

GET_NOT_OFFERED_ALLOW = "POST, DELETE"
MAX_ERROR_BODY_BYTES = 64 * 1024
"""Bytes read from a backend error response; the rest is discarded."""

_POST_ACCEPT = f"{JSON}, {EVENT_STREAM}"
_COPIED_REQUEST_HEADERS = ("last-event-id", "traceparent", "tracestate")
_GET_FAILURES = {
    401: "backend_unauthorized",
    403: "backend_forbidden",
    404: "backend_session_not_found",
    429: "backend_rate_limited",
}
_MESSAGES = {
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
}


class ForwardStage(BaseStage[RequestContext, GatewayResponse]):
    """Send the request to the backend and relay the response; the terminal stage.

    Reads ``backend_credentials`` (their headers authenticate the gateway),
    and ``backend_session`` when present (its backend session id is sent as
    ``Mcp-Session-Id``). It requires ``principal`` and ``decision`` so that a
    chain without authentication and authorization cannot be built.

    Upstream request headers are built from scratch: the client's
    ``Authorization``, cookies, session id, ``Host`` and hop-by-hop headers
    never reach the backend. A POST body is the parsed message encoded again,
    so the backend reads the message the stages checked, even when the
    client's body repeats a key.

    Of the backend's response only ``Content-Type`` and
    ``MCP-Protocol-Version`` reach the client. Event streams are relayed
    event by event as they arrive (see :class:`RelayStream`), and the
    upstream response is closed when the stream ends or the client leaves.
    For other stages it records in ``ctx.attributes``:

    - ``backend_status``: the backend's HTTP status (the exchange stage
      retries once after a 401);
    - ``backend_session_id``: the backend's ``Mcp-Session-Id`` response
      header, which the session stage maps and never shows the client;
    - ``backend_www_authenticate``: the backend's challenge on 401 and 403.

    Responses it builds itself, each after publishing ``BackendFailed``:

    - a request the backend could not serve gets HTTP 200 with a JSON-RPC
      error for the request id and a ``data.reason`` such as
      ``backend_unavailable`` or ``backend_timeout``. The backend was
      unreachable or timed out, or it returned 5xx, 401, 403, 404, 429,
      another 4xx, or a 2xx body that is not one JSON-RPC response to the
      request's id. A ``tools/call`` gets a result with ``isError``
      instead. An event stream that ends or fails before the response gets
      the same response as its last event;
    - a notification, GET or DELETE with such a failure has no id to put in a
      JSON-RPC error, so it gets 502, or 504 after a timeout.

    A 4xx whose body is a JSON-RPC error is relayed as that error, with the
    request id and HTTP 200. An accepted notification or response gets 202
    with no body. A GET that the backend does not serve as an event stream
    (405, another 4xx, or a 2xx of another type) gets 405 with ``Allow: POST,
    DELETE``. A backend status of 2xx, 404 or 405 to a DELETE gives 204.
    """

    requires: ClassVar[frozenset[str]] = frozenset(
        {PRINCIPAL, DECISION, BACKEND_CREDENTIALS}
    )
    terminal: ClassVar[bool] = True
    stability = "beta"

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Forward the request and return the backend's response."""
        credentials: BackendCredentials = ctx.fact(BACKEND_CREDENTIALS)
        session: BackendSession | None = ctx.get_fact(BACKEND_SESSION)
        headers = upstream_headers(ctx, credentials, session)
        for key in (BACKEND_STATUS, BACKEND_SESSION_ID, BACKEND_CHALLENGE):
            ctx.attributes.pop(key, None)
        client = ctx.runtime.backends[ctx.backend_name].client
        try:
            upstream = await client.send(ctx.http_method, headers, _upstream_body(ctx))
        except httpx.TimeoutException as exc:
            return await self._fail(ctx, "backend_timeout", type(exc).__name__, exc)
        except httpx.TransportError as exc:
            return await self._fail(ctx, "backend_unavailable", type(exc).__name__, exc)

        ctx.attributes[BACKEND_STATUS] = upstream.status_code
        backend_session_id = upstream.headers.get("mcp-session-id")
        if backend_session_id:
            ctx.attributes[BACKEND_SESSION_ID] = backend_session_id
        try:
            if ctx.http_method == "GET":
                return await self._relay_get(ctx, upstream)
            if ctx.http_method == "DELETE":
                return await self._relay_delete(ctx, upstream)
            return await self._relay_post(ctx, upstream, session)
        except httpx.TimeoutException as exc:
            await upstream.aclose()
            return await self._fail(ctx, "backend_timeout", type(exc).__name__, exc)
        except httpx.TransportError as exc:
            await upstream.aclose()
            return await self._fail(ctx, "backend_unavailable", type(exc).__name__, exc)
        except BaseException:
            await upstream.aclose()
            raise

    async def _relay_post(
        self,
        ctx: RequestContext,
        upstream: httpx.Response,
        session: BackendSession | None,
    ) -> GatewayResponse:
        status = upstream.status_code
        message = ctx.message
        is_request = message is not None and message.kind == "request"
        if 200 <= status < 300:
            if message is None or message.kind != "request":
                await upstream.aclose()
                return GatewayResponse(status=202)
            media_type = _media_type(upstream)
            if media_type == EVENT_STREAM:
                return self._stream(ctx, upstream)
            detail = f"HTTP {status} with content type {media_type or 'none'!r}"
            if media_type == JSON:
                body = await upstream.aread()
                await upstream.aclose()
                envelope = read_response_envelope(body)
                if envelope is not None and same_id(envelope.id, message.id):
                    return GatewayResponse(
                        status=200, headers=_relayed_headers(upstream, JSON), body=body
                    )
                if envelope is not None:
                    detail = f"HTTP {status} with a response to another request id"
            else:
                await upstream.aclose()
            return await self._fail(ctx, "backend_invalid_response", detail)

        body = await _read_limited(upstream)
        if status in (401, 403):
            challenge = upstream.headers.get("www-authenticate")
            if challenge:
                ctx.attributes[BACKEND_CHALLENGE] = challenge
            reason = "backend_unauthorized" if status == 401 else "backend_forbidden"
            return await self._fail(ctx, reason, f"HTTP {status}")
        if status == 404:
            sent_session = (
                session is not None and session.backend_session_id is not None
            )
            reason = (
                "backend_session_not_found" if sent_session else "backend_not_found"
            )
            return await self._fail(ctx, reason, "HTTP 404")
        if status == 429:
            retry_after = upstream.headers.get("retry-after", "")
            seconds = int(retry_after) if retry_after.isdigit() else None
            return await self._fail(
                ctx, "backend_rate_limited", "HTTP 429", retry_after=seconds
            )
        if 400 <= status < 500:
            if is_request and ctx.message is not None:
                relayed = _relay_backend_error(ctx.message.id, upstream, body)
                if relayed is not None:
                    return relayed
            return await self._fail(ctx, "backend_rejected", f"HTTP {status}")
        return await self._fail(ctx, "backend_unavailable", f"HTTP {status}")

    async def _relay_get(
        self, ctx: RequestContext, upstream: httpx.Response
    ) -> GatewayResponse:
        status = upstream.status_code
        if 200 <= status < 300 and _media_type(upstream) == EVENT_STREAM:
            return self._stream(ctx, upstream)
        await _read_limited(upstream)
        if status in _GET_FAILURES or status >= 500:
            reason = _GET_FAILURES.get(status, "backend_unavailable")
            return await self._fail(ctx, reason, f"HTTP {status}")
        # 405, another 4xx, or a 2xx that is not an event stream: the backend
        # offers no stream, so neither does the gateway.
        return jsonrpc_error_response(
            405,
            None,
            INTERNAL_ERROR,
            f"Method Not Allowed: backend {ctx.backend_name} offers no GET stream",
            reason="get_stream_not_offered",
            headers={"allow": GET_NOT_OFFERED_ALLOW},
        )

    async def _relay_delete(
        self, ctx: RequestContext, upstream: httpx.Response
    ) -> GatewayResponse:
        status = upstream.status_code
        await _read_limited(upstream)
        if 200 <= status < 300 or status in (404, 405):
            return GatewayResponse(status=204)
        return await self._fail(ctx, "backend_unavailable", f"HTTP {status}")

    def _stream(self, ctx: RequestContext, upstream: httpx.Response) -> GatewayResponse:
        async def report(reason: str, detail: str, exc: Exception | None) -> None:
            await self._publish_failure(ctx, reason, detail, exc)

        def fallback(reason: str) -> bytes:
            body = failure_response(ctx, reason).body
            return encode_event(SseEvent(data=body.decode()))

        message = ctx.message
        if message is not None and message.kind == "request":
            relay = RelayStream(upstream, report, answers=message.id, fallback=fallback)
        else:
            relay = RelayStream(upstream, report)

        async def close_upstream(_outcome: Any) -> None:
            await relay.aclose()

        headers = dict(SSE_HEADERS)
        version = upstream.headers.get("mcp-protocol-version")
        if version:
            headers["mcp-protocol-version"] = version
        return GatewayResponse(
            status=200, headers=headers, stream=relay, on_close=[close_upstream]
        )

    async def _fail(
        self,
        ctx: RequestContext,
        reason: str,
        detail: str,
        exc: Exception | None = None,
        *,
        retry_after: int | None = None,
    ) -> GatewayResponse:
        await self._publish_failure(ctx, reason, detail, exc)
        return failure_response(ctx, reason, retry_after=retry_after)

    async def _publish_failure(
        self, ctx: RequestContext, reason: str, detail: str, exc: Exception | None
    ) -> None:
        log.warning(
            "backend.request_failed",
            request_id=ctx.request_id,
            backend=ctx.backend_name,
            method=ctx.mcp_method,
            reason=reason,
            detail=detail,
            error=str(exc) if exc is not None else None,
        )
        await ctx.runtime.publish(
            BackendFailed(
                **ctx.event_fields(self.name),
                outcome="error",
                reason=reason,
                detail=detail,
            )
        )


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


def failure_response(
    ctx: RequestContext, reason: str, *, retry_after: int | None = None
) -> GatewayResponse:
    """Build the response to a request the backend could not serve.

    A ``tools/call`` gets a result with ``isError`` (so agents treat it as a
    failed tool, not a broken connection), another request a JSON-RPC error
    with ``data.reason``, both with HTTP 200. A notification, response, GET or
    DELETE gets 502, or 504 for ``backend_timeout``.
    """
    text = _MESSAGES.get(reason, "backend {name} failed").format(name=ctx.backend_name)
    data: dict[str, Any] = {"backend": ctx.backend_name}
    if retry_after is not None:
        data["retry_after"] = retry_after
    message = ctx.message
    if ctx.http_method == "POST" and message is not None and message.kind == "request":
        if message.method == "tools/call":
            result = {"content": [{"type": "text", "text": text}], "isError": True}
            body = encode({"jsonrpc": "2.0", "id": message.id, "result": result})
            return GatewayResponse(
                status=200, headers={"content-type": JSON}, body=body, reason=reason
            )
        return jsonrpc_error_response(
            200, message.id, INTERNAL_ERROR, text, reason=reason, data=data
        )
    status = 504 if reason == "backend_timeout" else 502
    return jsonrpc_error_response(
        status, None, INTERNAL_ERROR, text, reason=reason, data=data
    )


def _upstream_body(ctx: RequestContext) -> bytes:
    """Return the body to send: the parsed message, encoded again.

    Stages decide on the parsed message, but a body can hold a key twice
    (``"name"`` of ``tools/call``, or ``"method"``), and msgspec keeps the
    last one while a backend's parser may keep the first. Sending the parsed
    message makes the backend read exactly what the stages checked. Encoding
    costs about 0.3 us for a 160-byte ``tools/call`` and 50 us for a 100 KB
    one (``timeit`` of ``msgspec.json.Encoder.encode`` on a 2-core AMD EPYC).
    """
    if ctx.message is None:
        return ctx.body
    return encode(ctx.message.data)


def _relay_backend_error(
    request_id: Any, upstream: httpx.Response, body: bytes
) -> GatewayResponse | None:
    # A backend's JSON-RPC error (unknown tool, invalid params) reaches the
    # client with HTTP 200 and the client's own id.
    if _media_type(upstream) != JSON or read_response_envelope(body) is None:
        return None
    message = decode(body)
    error = message.get("error")
    if not isinstance(error, dict):
        return None
    body = encode({"jsonrpc": "2.0", "id": request_id, "error": error})
    return GatewayResponse(
        status=200, headers={"content-type": JSON}, body=body, reason="backend_rejected"
    )


def _relayed_headers(upstream: httpx.Response, media_type: str) -> dict[str, str]:
    headers = {"content-type": upstream.headers.get("content-type", media_type)}
    version = upstream.headers.get("mcp-protocol-version")
    if version:
        headers["mcp-protocol-version"] = version
    return headers


def _media_type(upstream: httpx.Response) -> str:
    content_type = str(upstream.headers.get("content-type", ""))
    return content_type.split(";", 1)[0].strip().lower()


async def _read_limited(upstream: httpx.Response) -> bytes:
    # Read at most MAX_ERROR_BODY_BYTES of a response the gateway will not
    # relay, then close it.
    chunks: list[bytes] = []
    size = 0
    body = upstream.aiter_bytes()
    try:
        async for chunk in body:
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ERROR_BODY_BYTES:
                break
    finally:
        await body.aclose()  # type: ignore[attr-defined]
        await upstream.aclose()
    return b"".join(chunks)[:MAX_ERROR_BODY_BYTES]
