"""Passing a handshake-era session through to a handshake-era backend.

The ``session`` stage maps each gateway session to a backend session. This
module contains the parts of that mapping that talk to the backend or track its
requests: reading the backend's response to ``initialize``, renewing a backend
session that the backend lost, the guard against a request id reused while it
is in flight, and how events name a session.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import structlog

from gateway.bridge.derived import derived_context, finish_unsent, read_messages
from gateway.context import RequestContext
from gateway.mcp.eras import HANDSHAKE_VERSIONS, UNSUPPORTED_PROTOCOL_VERSION
from gateway.mcp.jsonrpc import decode
from gateway.mcp.response import GatewayResponse, StreamOutcome
from gateway.mcp.sse import aclose_stream
from gateway.sessions import SessionRecord
from gateway.stages.forward import BACKEND_SESSION_ID, BACKEND_STATUS
from pipeline import Next

log = structlog.get_logger("gateway.bridge.handshake")


def session_ref(session_id: str) -> str:
    """Return how events name a session: a SHA-256 prefix, never the id itself."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


class BackendSessionRenewal:
    """The renewal of backend sessions that a handshake-era backend lost."""

    def __init__(self) -> None:
        self._reinitializing: dict[str, anyio.Lock] = {}

    async def renew(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        record: SessionRecord,
        lost_id: str,
    ) -> SessionRecord | None:
        """Replace the lost backend session ``lost_id`` and store the new id.

        Returns:
            The updated record, or None when the gateway session has ended or
            the backend did not accept a new ``initialize``.
        """
        # One renewal per session at a time: requests that failed on the same
        # lost backend session wait and reuse the first renewal's result.
        key = record.gateway_session_id
        lock = self._reinitializing.setdefault(key, anyio.Lock())
        try:
            async with lock:
                current = await ctx.runtime.sessions.get(key)
                if current is None:
                    return None
                if current.backend_session_id != lost_id:
                    return current
                new_id = await initialize_backend(ctx, call_next, current)
                if new_id is None:
                    return None
                current.backend_session_id = new_id
                await ctx.runtime.sessions.update(current)
                log.info(
                    "session.backend_reinitialized",
                    request_id=ctx.request_id,
                    backend=ctx.backend_name,
                    session=session_ref(key),
                )
                return current
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._reinitializing.pop(key, None)


async def initialize_backend(
    ctx: RequestContext,
    call_next: Next[RequestContext, GatewayResponse],
    record: SessionRecord,
) -> str | None:
    """Open a backend session with the stored ``initialize`` params.

    Sends ``initialize`` and then ``notifications/initialized`` through the
    rest of the chain.

    Returns:
        The new backend session id, or None when the backend did not accept.
    """
    request_id = f"gateway-{uuid.uuid4().hex}"
    initialize = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": record.initialize_params,
    }
    init_ctx = derived_context(
        ctx, initialize, protocol_version=None, backend_session_id=None
    )
    response = await call_next(init_ctx)
    messages = await read_messages(response)
    new_id = init_ctx.attributes.get(BACKEND_SESSION_ID)
    succeeded = any(m.get("id") == request_id and "result" in m for m in messages)
    if not succeeded or not isinstance(new_id, str):
        log.warning(
            "session.backend_reinitialize_failed",
            request_id=ctx.request_id,
            backend=ctx.backend_name,
            backend_status=init_ctx.attributes.get(BACKEND_STATUS),
        )
        return None
    version = _negotiated_version(messages, request_id) or record.protocol_version
    notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    notify_ctx = derived_context(
        ctx, notification, protocol_version=version, backend_session_id=new_id
    )
    await finish_unsent(await call_next(notify_ctx), None)
    return new_id


class InFlightRequests:
    """The request ids in flight in each gateway session.

    MCP forbids reusing an id while it is in flight, and a backend may then
    drop one of the two requests.
    """

    def __init__(self) -> None:
        # (gateway session id, request id as text) of the requests in flight.
        # NOTE: the set covers this process only. Once several replicas serve
        # one session, the in-flight ids must be tracked in the shared store.
        self._in_flight: set[tuple[str, str]] = set()

    def claim(self, session_id: str, request_id: Any) -> tuple[str, str] | None:
        """Mark ``request_id`` in flight, or return None if it already is."""
        # 5 and "5" are different JSON-RPC ids, but the official Python SDK
        # (mcp 2.3.0, server/streamable_http.py) keys its response streams by
        # str(id), so such a backend would drop one of the two.
        key = (session_id, str(request_id))
        if key in self._in_flight:
            return None
        self._in_flight.add(key)
        return key

    def release(self, key: tuple[str, str]) -> None:
        """Free a claimed id at once."""
        self._in_flight.discard(key)

    def release_when_answered(
        self, response: GatewayResponse, key: tuple[str, str]
    ) -> GatewayResponse:
        """Free a claimed id once the client can have its response.

        That is before a JSON body is sent, and before the event that carries
        the response is relayed, so a client that waits for each response is
        never rejected. A stream that ends unanswered frees the id when it
        closes.
        """
        stream = response.stream
        if stream is None:
            self._in_flight.discard(key)
            return response

        async def release(_outcome: StreamOutcome) -> None:
            self._in_flight.discard(key)

        response.on_close.append(release)
        response.stream = self._release_on_answer(stream, key)
        return response

    async def _release_on_answer(
        self, stream: AsyncIterator[bytes], key: tuple[str, str]
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                if getattr(stream, "answered", False):
                    self._in_flight.discard(key)
                yield chunk
        finally:
            await aclose_stream(stream)


def refuses_handshake(response: GatewayResponse) -> bool:
    """Return whether ``initialize`` failed because only 2026-07-28 is served.

    That is a JSON-RPC error -32022 whose ``data.supported`` lists no
    handshake revision.
    """
    if response.is_stream or not response.body:
        return False
    try:
        message = decode(response.body)
    except msgspec.DecodeError:
        return False
    error = message.get("error") if isinstance(message, dict) else None
    if not isinstance(error, dict) or error.get("code") != UNSUPPORTED_PROTOCOL_VERSION:
        return False
    data = error.get("data")
    supported = data.get("supported") if isinstance(data, dict) else None
    return isinstance(supported, list) and not any(
        version in HANDSHAKE_VERSIONS for version in supported
    )


def initialize_accepted(ctx: RequestContext, response: GatewayResponse) -> bool:
    """Return whether the backend accepted the client's ``initialize``."""
    status = ctx.attributes.get(BACKEND_STATUS)
    if not isinstance(status, int) or not 200 <= status < 300 or response.status != 200:
        return False
    if response.is_stream:
        # The result is still on its way; the backend accepted the request.
        return True
    try:
        message = decode(response.body)
    except msgspec.DecodeError:
        return False
    return isinstance(message, dict) and "result" in message


def _negotiated_version(messages: list[dict[str, Any]], request_id: str) -> str | None:
    for message in messages:
        result = message.get("result")
        if message.get("id") == request_id and isinstance(result, dict):
            version = result.get("protocolVersion")
            if isinstance(version, str):
                return version
    return None
