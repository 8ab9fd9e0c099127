"""The ``session`` stage: the client's MCP session, mapped to the backend's."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import msgspec
import structlog

from gateway.bridge.backend_era import BackendEras, Discovery
from gateway.bridge.derived import derived_context, finish_unsent, read_messages
from gateway.bridge.shared import SharedSessionBridge
from gateway.bridge.terminated import (
    TerminatedSessions,
    client_envelope,
    initialize_response,
)
from gateway.context import RequestContext
from gateway.events import (
    Outcome,
    SessionCreated,
    SessionEnded,
    SessionRejected,
    SessionResumed,
)
from gateway.facts import (
    AGENT,
    BACKEND_SESSION,
    PRINCIPAL,
    AgentIdentity,
    BackendSession,
    Principal,
)
from gateway.mcp.eras import HANDSHAKE_VERSIONS, UNSUPPORTED_PROTOCOL_VERSION
from gateway.mcp.jsonrpc import INVALID_REQUEST, decode
from gateway.mcp.response import GatewayResponse, StreamOutcome, jsonrpc_error_response
from gateway.mcp.sse import aclose_stream
from gateway.sessions import SessionRecord
from gateway.stages.forward import BACKEND_SESSION_ID, BACKEND_STATUS, failure_response
from pipeline import BaseStage, Next

log = structlog.get_logger("gateway.stages.session")


class SessionStage(BaseStage[RequestContext, GatewayResponse]):
    """Map the gateway's MCP session to the backend's; provide ``backend_session``.

    Reads ``principal`` and ``agent``. Every session is bound to the user's
    issuer and subject, the agent id and the backend, never to token bytes, so
    a refreshed token keeps its session. Provides ``backend_session`` for the
    forward stage.

    - ``initialize`` needs no session. A session id the client still sends is
      ignored and never forwarded. After the rest of the chain, when the
      backend accepted, it mints a gateway session id, stores the mapping to
      the backend's id (None for a backend that issued none) and returns the
      gateway id as ``Mcp-Session-Id``. Publishes ``SessionCreated``.
    - Other requests without ``Mcp-Session-Id`` end the chain with 400
      (``missing_session``). An unknown, ended or expired id, or one bound to
      another user, agent or backend, ends it with 404 (``unknown_session``),
      the same response in every case so that nothing reveals whether the
      session exists. Both publish ``SessionRejected``.
    - A request whose id is still in flight in the same session ends the
      chain with 400 (``request_id_in_use``) and ``SessionRejected``. MCP
      forbids reusing an id while it is in flight, and a backend may then
      drop one of the two. Ids are compared as text, so 5 and ``"5"`` count
      as the same. The id is free again once its response ended.
    - A known session publishes ``SessionResumed`` and extends its expiry.
      When the backend returns 404 because it dropped its session, the stage
      initializes a new backend session with the stored ``initialize``
      params, sends ``notifications/initialized``, updates the mapping and
      runs the rest of the chain once more.
    - DELETE ends the backend session (a backend 404 or 405 is fine), removes
      the mapping, publishes ``SessionEnded`` and returns 204.
    """

    requires: ClassVar[frozenset[str]] = frozenset({PRINCIPAL, AGENT})
    provides: ClassVar[frozenset[str]] = frozenset({BACKEND_SESSION})
    stability = "beta"

    def __init__(self, *, name: str, config: Any, resources: Any) -> None:
        super().__init__(name=name, config=config, resources=resources)
        self._reinitializing: dict[str, anyio.Lock] = {}
        self._eras = BackendEras()
        self._terminated = TerminatedSessions()
        self._shared: SharedSessionBridge | None = None
        # (gateway session id, request id as text) of the requests in flight.
        # NOTE: the set covers this process only. Once several replicas serve
        # one session, the in-flight ids must be tracked in the shared store.
        self._in_flight: set[tuple[str, str]] = set()

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide ``backend_session``, or end the chain with 400 or 404."""
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity = ctx.fact(AGENT)
        if ctx.era == "stateless":
            return await self._stateless(ctx, call_next)
        if ctx.http_method == "POST" and ctx.mcp_method == "initialize":
            if self._eras.known(ctx) == "stateless":
                return await self._initialize_terminated(ctx, call_next, None)
            return await self._initialize(ctx, call_next, principal, agent)

        message_id = ctx.message.id if ctx.message is not None else None
        if not ctx.session_id:
            detail = "Bad Request: missing Mcp-Session-Id header; send initialize first"
            await self._reject(ctx, principal, agent, 400, "missing_session", detail)
            return jsonrpc_error_response(
                400, message_id, INVALID_REQUEST, detail, reason="missing_session"
            )
        record = await ctx.runtime.sessions.get_bound(
            ctx.session_id,
            user_iss=principal.iss,
            user_sub=principal.sub,
            agent_id=agent.id,
            backend=ctx.backend_name,
        )
        if record is None:
            detail = "Not Found: unknown or ended session; send initialize again"
            await self._reject(ctx, principal, agent, 404, "unknown_session", detail)
            return jsonrpc_error_response(
                404, message_id, INVALID_REQUEST, detail, reason="unknown_session"
            )

        if ctx.http_method == "DELETE":
            return await self._delete(ctx, call_next, principal, agent, record)
        if record.backend_era == "stateless":
            await ctx.runtime.sessions.touch(record)
            ctx.provide(BACKEND_SESSION, _fact(record))
            return await self._terminated.handle(ctx, call_next, record)

        message = ctx.message
        if message is None or message.kind != "request":
            return await self._resume(ctx, call_next, record)
        # 5 and "5" are different JSON-RPC ids, but the official Python SDK
        # (mcp 2.3.0, server/streamable_http.py) keys its response streams by
        # str(id), so such a backend would drop one of the two.
        key = (record.gateway_session_id, str(message.id))
        if key in self._in_flight:
            detail = (
                "Invalid Request: request id already in use in this session; "
                "wait for its response or send another id"
            )
            await self._reject(
                ctx, principal, agent, 400, "request_id_in_use", detail, "error"
            )
            return jsonrpc_error_response(
                400, message.id, INVALID_REQUEST, detail, reason="request_id_in_use"
            )
        self._in_flight.add(key)
        try:
            response = await self._resume(ctx, call_next, record)
        except BaseException:
            self._in_flight.discard(key)
            raise

        # The id is free once the client can have its response: before a JSON
        # body is sent, and before the event that carries the response is
        # relayed. A client that waits for each response is never rejected.
        stream = response.stream
        if stream is None:
            self._in_flight.discard(key)
            return response

        async def release(_outcome: StreamOutcome) -> None:
            self._in_flight.discard(key)

        response.on_close.append(release)
        response.stream = self._release_on_answer(stream, key)
        return response

    async def _stateless(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        # A 2026-07-28 client: passed through to a 2026-07-28 backend, bridged
        # to a handshake-era one through a shared backend session.
        ctx.provide(
            BACKEND_SESSION,
            BackendSession(
                gateway_session_id=None,
                backend_session_id=None,
                protocol_version=ctx.protocol_version,
            ),
        )
        era = self._eras.known(ctx)
        if era is None:
            era, _ = await self._eras.probe(ctx, call_next, ctx.envelope)
            if era is None:
                return failure_response(ctx, "backend_unavailable")
        if era == "stateless":
            return await call_next(ctx)
        if self._shared is None:
            self._shared = SharedSessionBridge(
                ctx.runtime.store, ttl=ctx.runtime.sessions.ttl
            )
        return await self._shared.handle(ctx, call_next)

    async def _initialize_terminated(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        discovery: Discovery | None,
    ) -> GatewayResponse:
        # A handshake-era client of a 2026-07-28 backend: the gateway answers
        # initialize from server/discover and holds the session alone.
        message = ctx.message
        assert message is not None
        params = message.params
        if discovery is None:
            era, discovery = await self._eras.probe(
                ctx, call_next, client_envelope(params)
            )
            if era == "handshake":
                return await self._initialize(
                    ctx, call_next, ctx.fact(PRINCIPAL), ctx.fact(AGENT)
                )
            if discovery is None:
                return failure_response(ctx, "backend_unavailable")
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity = ctx.fact(AGENT)
        response = initialize_response(message.id, params, discovery, ctx.backend_name)
        requested = params.get("protocolVersion")
        record = await ctx.runtime.sessions.create(
            user_iss=principal.iss,
            user_sub=principal.sub,
            agent_id=agent.id,
            backend=ctx.backend_name,
            backend_session_id=None,
            protocol_version=requested if isinstance(requested, str) else None,
            initialize_params=params,
            backend_era="stateless",
        )
        response.headers["mcp-session-id"] = record.gateway_session_id
        ctx.response_session_id = record.gateway_session_id
        await ctx.runtime.publish(
            SessionCreated(
                session=session_ref(record.gateway_session_id),
                **{
                    **ctx.event_fields(self.name),
                    "protocol_version": record.protocol_version,
                },
            )
        )
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

    async def _resume(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        record: SessionRecord,
    ) -> GatewayResponse:
        await ctx.runtime.sessions.touch(record)
        await ctx.runtime.publish(
            SessionResumed(
                session=session_ref(record.gateway_session_id),
                **ctx.event_fields(self.name),
            )
        )
        ctx.provide(BACKEND_SESSION, _fact(record))
        response = await call_next(ctx)
        used = record.backend_session_id
        if used is None or ctx.attributes.get(BACKEND_STATUS) != 404:
            return response

        renewed = await self._renew_backend_session(ctx, call_next, record, used)
        if renewed is None:
            return response
        await finish_unsent(
            response, "discarded: retried after the backend lost its session"
        )
        ctx.provide(BACKEND_SESSION, _fact(renewed))
        return await call_next(ctx)

    async def _initialize(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        principal: Principal,
        agent: AgentIdentity,
    ) -> GatewayResponse:
        params = ctx.message.params if ctx.message is not None else {}
        requested = params.get("protocolVersion")
        version = requested if isinstance(requested, str) else None
        # initialize is the negotiation itself and carries no version header.
        ctx.provide(
            BACKEND_SESSION,
            BackendSession(gateway_session_id=None, backend_session_id=None),
        )
        response = await call_next(ctx)
        if _refuses_handshake(response):
            # The backend serves 2026-07-28 only: hold the session here.
            await finish_unsent(response, "discarded: the backend speaks 2026-07-28")
            self._eras.record(ctx.backend_name, "stateless")
            return await self._initialize_terminated(ctx, call_next, None)
        if not _initialize_accepted(ctx, response):
            return response
        record = await ctx.runtime.sessions.create(
            user_iss=principal.iss,
            user_sub=principal.sub,
            agent_id=agent.id,
            backend=ctx.backend_name,
            backend_session_id=ctx.attributes.get(BACKEND_SESSION_ID),
            protocol_version=version,
            initialize_params=params,
        )
        response.headers["mcp-session-id"] = record.gateway_session_id
        ctx.response_session_id = record.gateway_session_id
        await ctx.runtime.publish(
            SessionCreated(
                session=session_ref(record.gateway_session_id),
                **{**ctx.event_fields(self.name), "protocol_version": version},
            )
        )
        return response

    async def _delete(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        principal: Principal,
        agent: AgentIdentity,
        record: SessionRecord,
    ) -> GatewayResponse:
        if record.backend_session_id is not None:
            ctx.provide(BACKEND_SESSION, _fact(record))
            response = await call_next(ctx)
            # The backend session ends on the backend's own expiry if this failed.
            await finish_unsent(
                response, "discarded: the gateway responds to DELETE itself"
            )
        await ctx.runtime.sessions.delete(record.gateway_session_id)
        await ctx.runtime.publish(
            SessionEnded(
                session=session_ref(record.gateway_session_id),
                **ctx.event_fields(self.name),
            )
        )
        return GatewayResponse(status=204)

    async def _renew_backend_session(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        record: SessionRecord,
        lost_id: str,
    ) -> SessionRecord | None:
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
                new_id = await self._initialize_backend(ctx, call_next, current)
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

    async def _initialize_backend(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        record: SessionRecord,
    ) -> str | None:
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

    async def _reject(
        self,
        ctx: RequestContext,
        principal: Principal,
        agent: AgentIdentity,
        status: int,
        reason: str,
        detail: str,
        outcome: Outcome = "denied",
    ) -> None:
        await ctx.runtime.publish(
            SessionRejected(
                status=status,
                detail=detail,
                outcome=outcome,
                reason=reason,
                **ctx.event_fields(self.name),
            )
        )


def session_ref(session_id: str) -> str:
    """Return how events name a session: a SHA-256 prefix, never the id itself."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


def _fact(record: SessionRecord) -> BackendSession:
    return BackendSession(
        gateway_session_id=record.gateway_session_id,
        backend_session_id=record.backend_session_id,
        protocol_version=record.protocol_version,
    )


def _refuses_handshake(response: GatewayResponse) -> bool:
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


def _initialize_accepted(ctx: RequestContext, response: GatewayResponse) -> bool:
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
