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
from gateway.mcp.answers import open_relay, request_deadline
from gateway.mcp.backend import DeadlineExceeded, unsupported_content_encoding
from gateway.mcp.bodies import (
    MessageTooLarge,
    collect_answer,
    read_limited,
    read_message,
)
from gateway.mcp.failures import failure_response as failure_response
from gateway.mcp.headers import EVENT_STREAM, JSON, accepts
from gateway.mcp.jsonrpc import INTERNAL_ERROR, read_response_envelope, same_id
from gateway.mcp.relay import RelayStream
from gateway.mcp.response import SSE_HEADERS, GatewayResponse, jsonrpc_error_response
from gateway.mcp.upstream import (
    cancel_callback,
    cancel_upstream,
    media_type_of,
    relay_backend_error,
    relayed_headers,
    upstream_body,
    upstream_headers,
)
from pipeline import BaseStage, Next

log = structlog.get_logger("gateway.stages.forward")

BACKEND_STATUS = "backend_status"
"""``ctx.attributes`` key: the backend's HTTP status, absent when no response came."""
BACKEND_SESSION_ID = "backend_session_id"
"""``ctx.attributes`` key: the ``Mcp-Session-Id`` response header of the backend."""
BACKEND_CHALLENGE = "backend_www_authenticate"
"""``ctx.attributes`` key: the backend's ``WWW-Authenticate`` on 401 and 403."""

GET_NOT_OFFERED_ALLOW = "POST, DELETE"

_GET_FAILURES = {
    401: "backend_unauthorized",
    403: "backend_forbidden",
    404: "backend_session_not_found",
    429: "backend_rate_limited",
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

    Of the backend's response only ``Content-Type`` reaches the client: its
    ``MCP-Protocol-Version`` names the backend hop's version, which an era
    bridge makes differ from the client's. Bodies are read decoded from
    their ``Content-Encoding``, so the client never gets compressed bytes.
    Event streams are relayed event by event as they arrive (see
    :class:`RelayStream`), with a keepalive comment after
    ``server.sse_keepalive`` seconds of silence, and the upstream response
    is closed when the stream ends or the client leaves. A client whose
    ``Accept`` excludes event streams gets the response from the backend's
    stream as a JSON body instead. A backend message larger than
    ``server.max_message_bytes`` fails its request with
    ``backend_message_too_large``. Past the backend's ``deadline`` a POST is
    abandoned with ``backend_deadline``, and a handshake-era backend gets
    ``notifications/cancelled`` once the client has its error.
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
      JSON-RPC error, so it gets 502, or 504 after a timeout or the deadline.

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
            upstream = await client.send(
                ctx.http_method,
                headers,
                upstream_body(ctx),
                deadline=request_deadline(ctx),
            )
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
            media_type = media_type_of(upstream)
            coding = unsupported_content_encoding(upstream.headers)
            if coding is not None:
                await upstream.aclose()
                detail = f"HTTP {status} with unsupported Content-Encoding {coding!r}"
                return await self._fail(ctx, "backend_invalid_response", detail)
            if media_type == EVENT_STREAM:
                if accepts(ctx.headers.get("accept"), EVENT_STREAM):
                    return self._stream(ctx, upstream)
                return await self._answer_as_json(ctx, upstream, message.id)
            detail = f"HTTP {status} with content type {media_type or 'none'!r}"
            if media_type == JSON:
                limit = ctx.runtime.config.server.max_message_bytes
                try:
                    body = await read_message(
                        upstream, limit=limit, deadline=request_deadline(ctx)
                    )
                except MessageTooLarge as exc:
                    reason = "backend_message_too_large"
                    return await self._fail(ctx, reason, str(exc))
                except httpx.DecodingError:
                    detail = f"HTTP {status} with a body that does not match its "
                    detail += "Content-Encoding"
                    return await self._fail(ctx, "backend_invalid_response", detail)
                envelope = read_response_envelope(body)
                if envelope is not None and same_id(envelope.id, message.id):
                    return GatewayResponse(
                        status=200, headers=relayed_headers(upstream, JSON), body=body
                    )
                if envelope is not None:
                    detail = f"HTTP {status} with a response to another request id"
            else:
                await upstream.aclose()
            return await self._fail(ctx, "backend_invalid_response", detail)

        body = await read_limited(upstream)
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
            # Without a session, a 2026-07-28 backend answers an unknown
            # method with 404 and a JSON-RPC error for the request. With one,
            # 404 means the backend lost the session, whatever the body says.
            envelope = read_response_envelope(body)
            if (
                not sent_session
                and envelope is not None
                and message is not None
                and same_id(envelope.id, message.id)
            ):
                relayed = relay_backend_error(message.id, upstream, body)
                if relayed is not None:
                    return relayed
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
                relayed = relay_backend_error(ctx.message.id, upstream, body)
                if relayed is not None:
                    return relayed
            return await self._fail(ctx, "backend_rejected", f"HTTP {status}")
        return await self._fail(ctx, "backend_unavailable", f"HTTP {status}")

    async def _relay_get(
        self, ctx: RequestContext, upstream: httpx.Response
    ) -> GatewayResponse:
        status = upstream.status_code
        if 200 <= status < 300 and media_type_of(upstream) == EVENT_STREAM:
            return self._stream(ctx, upstream)
        await read_limited(upstream)
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
        await read_limited(upstream)
        if 200 <= status < 300 or status in (404, 405):
            return GatewayResponse(status=204)
        return await self._fail(ctx, "backend_unavailable", f"HTTP {status}")

    def _stream(self, ctx: RequestContext, upstream: httpx.Response) -> GatewayResponse:
        relay = self._relay(ctx, upstream, to_client=True)

        async def close_upstream(_outcome: Any) -> None:
            await relay.aclose()
            if relay.deadline_passed:
                await cancel_upstream(ctx)

        return GatewayResponse(
            status=200,
            headers=dict(SSE_HEADERS),
            stream=relay,
            on_close=[close_upstream],
        )

    def _relay(
        self, ctx: RequestContext, upstream: httpx.Response, *, to_client: bool
    ) -> RelayStream:
        async def report(reason: str, detail: str, exc: Exception | None) -> None:
            await self._publish_failure(ctx, reason, detail, exc)

        return open_relay(ctx, upstream, report, to_client=to_client)

    async def _answer_as_json(
        self, ctx: RequestContext, upstream: httpx.Response, request_id: Any
    ) -> GatewayResponse:
        # A client whose Accept excludes event streams gets the response of
        # the backend's stream as a JSON body; notifications are dropped.
        relay = self._relay(ctx, upstream, to_client=False)
        answer = await collect_answer(relay, request_id)
        if answer is None:
            # The relay ends every unanswered stream with the gateway's own
            # response, so this is only reached if that changes.
            detail = "the event stream ended without the response"
            return await self._fail(ctx, "backend_invalid_response", detail)
        response = GatewayResponse(
            status=200, headers=relayed_headers(upstream, JSON), body=answer
        )
        response.headers["content-type"] = JSON
        response.reason = relay.failure_reason
        if relay.deadline_passed:
            response.on_close.append(cancel_callback(ctx))
        return response

    async def _fail(
        self,
        ctx: RequestContext,
        reason: str,
        detail: str,
        exc: Exception | None = None,
        *,
        retry_after: int | None = None,
    ) -> GatewayResponse:
        deadline_passed = isinstance(exc, DeadlineExceeded)
        if deadline_passed:
            reason, detail = "backend_deadline", str(exc)
        await self._publish_failure(ctx, reason, detail, exc)
        response = failure_response(ctx, reason, retry_after=retry_after)
        if deadline_passed:
            response.on_close.append(cancel_callback(ctx))
        return response

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
