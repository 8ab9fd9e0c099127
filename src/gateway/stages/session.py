"""The ``session`` stage: the client's MCP session, mapped to the backend's."""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.bridge.backend_era import BackendEras, Discovery
from gateway.bridge.derived import finish_unsent
from gateway.bridge.handshake import (
    BackendSessionRenewal,
    InFlightRequests,
    initialize_accepted,
    refuses_handshake,
)
from gateway.bridge.handshake import session_ref as session_ref
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
from gateway.mcp.jsonrpc import INVALID_REQUEST
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response
from gateway.sessions import SessionRecord
from gateway.stages.forward import BACKEND_SESSION_ID, BACKEND_STATUS, failure_response
from pipeline import BaseStage, Next


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
        self._renewal = BackendSessionRenewal()
        self._eras = BackendEras()
        self._terminated = TerminatedSessions()
        self._shared: SharedSessionBridge | None = None
        self._in_flight = InFlightRequests()

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide ``backend_session``, or end the chain with 400 or 404."""
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity = ctx.fact(AGENT)
        if ctx.era == "stateless":
            return await self._stateless(ctx, call_next)
        if ctx.http_method == "POST" and ctx.mcp_method == "initialize":
            if self._eras.refuses_handshake(ctx):
                return await self._initialize_terminated(ctx, call_next, None)
            return await self._initialize(ctx, call_next)

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
        key = self._in_flight.claim(record.gateway_session_id, message.id)
        if key is None:
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
        try:
            response = await self._resume(ctx, call_next, record)
        except BaseException:
            self._in_flight.release(key)
            raise
        return self._in_flight.release_when_answered(response, key)

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
        serves = self._eras.serves_stateless(ctx)
        if serves is None:
            era, _ = await self._eras.probe(ctx, call_next, ctx.envelope)
            if era is None:
                return failure_response(ctx, "backend_unavailable")
            serves = era == "stateless"
        if serves:
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
            _, discovery = await self._eras.probe(
                ctx, call_next, client_envelope(params)
            )
            if discovery is None:
                # It refused initialize, yet does not serve 2026-07-28 either.
                return failure_response(ctx, "backend_unavailable")
        response = initialize_response(message.id, params, discovery, ctx.backend_name)
        await self._open_session(ctx, response, None, backend_era="stateless")
        return response

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

        renewed = await self._renewal.renew(ctx, call_next, record, used)
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
    ) -> GatewayResponse:
        # initialize is the negotiation itself and carries no version header.
        ctx.provide(
            BACKEND_SESSION,
            BackendSession(gateway_session_id=None, backend_session_id=None),
        )
        response = await call_next(ctx)
        if refuses_handshake(response):
            # The backend serves 2026-07-28 only: hold the session here.
            await finish_unsent(response, "discarded: the backend speaks 2026-07-28")
            self._eras.record_refusal(ctx.backend_name)
            return await self._initialize_terminated(ctx, call_next, None)
        if not initialize_accepted(ctx, response):
            return response
        await self._open_session(
            ctx,
            response,
            ctx.attributes.get(BACKEND_SESSION_ID),
            backend_era="handshake",
        )
        return response

    async def _open_session(
        self,
        ctx: RequestContext,
        response: GatewayResponse,
        backend_session_id: str | None,
        *,
        backend_era: str,
    ) -> None:
        """Store a new session for an accepted ``initialize``.

        Sets ``Mcp-Session-Id`` on ``response`` and publishes ``SessionCreated``
        with the protocol version the client asked for.
        """
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity = ctx.fact(AGENT)
        params = ctx.message.params if ctx.message is not None else {}
        requested = params.get("protocolVersion")
        version = requested if isinstance(requested, str) else None
        record = await ctx.runtime.sessions.create(
            user_iss=principal.iss,
            user_sub=principal.sub,
            agent_id=agent.id,
            backend=ctx.backend_name,
            backend_session_id=backend_session_id,
            protocol_version=version,
            initialize_params=params,
            backend_era=backend_era,
        )
        response.headers["mcp-session-id"] = record.gateway_session_id
        ctx.response_session_id = record.gateway_session_id
        await ctx.runtime.publish(
            SessionCreated(
                session=session_ref(record.gateway_session_id),
                **{**ctx.event_fields(self.name), "protocol_version": version},
            )
        )

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


def _fact(record: SessionRecord) -> BackendSession:
    return BackendSession(
        gateway_session_id=record.gateway_session_id,
        backend_session_id=record.backend_session_id,
        protocol_version=record.protocol_version,
    )
