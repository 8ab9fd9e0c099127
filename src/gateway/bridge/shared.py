"""Serving 2026-07-28 clients from a handshake-era backend.

A 2026-07-28 client sends self-contained requests; a handshake-era backend
wants ``initialize`` and a session. The gateway keeps one backend session per
user, agent and backend, initialized with no client capabilities (the
stateless revision has no server-to-client requests), and shares it between
that user's concurrent requests. Each request gets a fresh backend-side
JSON-RPC id so that concurrent requests cannot collide, and the response gets
the client's id back with its exact value and type.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import structlog

from gateway.bridge.backend_era import GATEWAY_CLIENT_INFO
from gateway.bridge.derived import (
    adopt_outcome,
    derived_context,
    error_of,
    finish_unsent,
    read_messages,
    result_of,
)
from gateway.context import RequestContext
from gateway.facts import AGENT, PRINCIPAL, AgentIdentity, Principal
from gateway.mcp.eras import (
    LATEST_HANDSHAKE_VERSION,
    SERVER_INFO_KEY,
    STATELESS_VERSIONS,
    as_stateless_result,
    without_envelope,
)
from gateway.mcp.headers import JSON
from gateway.mcp.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    encode,
)
from gateway.mcp.response import GatewayResponse, StreamOutcome, jsonrpc_error_response
from gateway.mcp.sse import aclose_stream, transform_messages
from gateway.stages.forward import BACKEND_SESSION_ID, BACKEND_STATUS
from gateway.store import Store, TypedStore
from pipeline import Next

log = structlog.get_logger("gateway.bridge.shared")

NAMESPACE = "shared_backend_session"
CANCEL_SECONDS = 5.0
"""Maximum seconds to wait for the backend to accept ``notifications/cancelled``."""


class SharedSession(msgspec.Struct, kw_only=True):
    """The backend session that 2026-07-28 requests of one user and agent share.

    Attributes:
        backend_session_id: The backend's ``Mcp-Session-Id``, or None when it
            issued none.
        protocol_version: The version the backend agreed to in ``initialize``.
        capabilities: The backend's capabilities.
        server_info: The backend's ``serverInfo``.
        instructions: The backend's instructions, if any.
    """

    backend_session_id: str | None
    protocol_version: str
    capabilities: dict[str, Any] = msgspec.field(default_factory=dict)
    server_info: dict[str, Any] | None = None
    instructions: str | None = None


class SharedSessionBridge:
    """Serve 2026-07-28 requests from a handshake-era backend.

    - ``server/discover`` is answered by the gateway from the backend's
      ``initialize`` result.
    - Other requests go to the shared backend session with a fresh
      backend-side id and without the 2026-07-28 envelope keys, at the
      version the backend agreed to. When the backend answers 404 because it
      dropped its session, the session is initialized again (once for all
      requests that saw the loss) and the request is sent once more.
    - When the client closes a response stream before the response, which
      is how a 2026-07-28 client cancels, the backend gets
      ``notifications/cancelled`` with the backend-side id. A posted
      ``notifications/cancelled`` for a request of the same user and agent
      in flight does the same; other notifications get 202 and stay here.
    """

    def __init__(self, store: Store, *, ttl: float) -> None:
        self._sessions = TypedStore(store, NAMESPACE, SharedSession)
        self._ttl = ttl
        self._locks: dict[str, anyio.Lock] = {}
        # (shared session key, client request id as JSON) -> backend-side id.
        # JSON keeps 7 and "7" apart.
        self._in_flight: dict[tuple[str, str], str] = {}

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Handle one 2026-07-28 message through the shared backend session."""
        message = ctx.message
        key = _key(ctx)
        if message is None or message.kind == "response":
            detail = "Invalid Request: a 2026-07-28 client sends no responses"
            return jsonrpc_error_response(
                400, None, INVALID_REQUEST, detail, reason="invalid_request"
            )
        if message.kind == "notification":
            if message.method == "notifications/cancelled":
                await self._cancel_posted(ctx, call_next, key, message.params)
            return GatewayResponse(status=202)

        if message.method == "initialize":
            # The shared backend session is the gateway's; a client must not
            # start it over, and 2026-07-28 has no initialize.
            detail = "Method not found: initialize does not exist in 2026-07-28"
            return jsonrpc_error_response(
                200, message.id, METHOD_NOT_FOUND, detail, reason="method_not_found"
            )
        session = await self._session(ctx, call_next, key, None)
        if session is None:
            return _unavailable(ctx, message.id)
        if message.method == "server/discover":
            return _discover_response(message.id, session)

        response = await self._send(ctx, call_next, key, session)
        if ctx.attributes.get(BACKEND_STATUS) == 404 and session.backend_session_id:
            renewed = await self._session(
                ctx, call_next, key, session.backend_session_id
            )
            if renewed is not None:
                await finish_unsent(
                    response, "discarded: retried after the backend lost its session"
                )
                response = await self._send(ctx, call_next, key, renewed)
        return response

    async def _send(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        key: str,
        session: SharedSession,
    ) -> GatewayResponse:
        message = ctx.message
        assert message is not None
        client_id = message.id
        backend_id = f"gateway-{uuid.uuid4().hex}"
        upstream = {
            "jsonrpc": "2.0",
            "id": backend_id,
            "method": message.method,
            "params": without_envelope(message.params),
        }
        if not upstream["params"]:
            del upstream["params"]
        sent = derived_context(
            ctx,
            upstream,
            protocol_version=session.protocol_version,
            backend_session_id=session.backend_session_id,
        )
        try:
            response = await call_next(sent)
        except anyio.get_cancelled_exc_class():
            # The client left before the backend responded: 2026-07-28 counts
            # that as cancelling the request.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_SECONDS):
                await self._cancel(ctx, call_next, session, backend_id, "client left")
            raise
        adopt_outcome(ctx, sent)

        def restore(item: dict[str, Any]) -> dict[str, Any] | None:
            if item.get("id") != backend_id or "method" in item:
                return None
            restored = dict(item)
            restored["id"] = client_id
            result = restored.get("result")
            if isinstance(result, dict):
                restored["result"] = as_stateless_result(message.method, result)
            return restored

        relay = response.stream
        response = transform_messages(response, restore)
        flight = (key, id_key(client_id))
        self._in_flight[flight] = backend_id
        if response.stream is None:
            self._in_flight.pop(flight, None)
            return response

        async def cancel_unanswered(outcome: StreamOutcome) -> None:
            self._in_flight.pop(flight, None)
            if outcome.completed or getattr(relay, "answered", True):
                return
            await self._cancel(ctx, call_next, session, backend_id, "stream closed")

        response.on_close.append(cancel_unanswered)
        response.stream = _closing(response.stream, relay)
        return response

    async def _session(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        key: str,
        lost_id: str | None,
    ) -> SharedSession | None:
        # One initialization per key at a time; requests that wait reuse it.
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:
                current = await self._sessions.get(key)
                if current is not None and (
                    lost_id is None or current.backend_session_id != lost_id
                ):
                    return current
                created = await self._initialize(ctx, call_next)
                if created is not None:
                    await self._sessions.set(key, created, self._ttl)
                    log.info(
                        "bridge.backend_session_initialized",
                        request_id=ctx.request_id,
                        backend=ctx.backend_name,
                        renewed=lost_id is not None,
                        protocol_version=created.protocol_version,
                    )
                return created
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    async def _initialize(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> SharedSession | None:
        request_id = f"gateway-init-{uuid.uuid4().hex}"
        initialize = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "initialize",
            "params": {
                "protocolVersion": LATEST_HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": GATEWAY_CLIENT_INFO,
            },
        }
        init_ctx = derived_context(
            ctx, initialize, protocol_version=None, backend_session_id=None
        )
        messages = await read_messages(await call_next(init_ctx))
        result = result_of(messages, request_id)
        version = result.get("protocolVersion") if result is not None else None
        if result is None or not isinstance(version, str):
            log.warning(
                "bridge.backend_initialize_failed",
                request_id=ctx.request_id,
                backend=ctx.backend_name,
                backend_status=init_ctx.attributes.get(BACKEND_STATUS),
                error=error_of(messages, request_id),
            )
            return None
        session_id = init_ctx.attributes.get(BACKEND_SESSION_ID)
        capabilities = result.get("capabilities")
        info = result.get("serverInfo")
        instructions = result.get("instructions")
        session = SharedSession(
            backend_session_id=session_id if isinstance(session_id, str) else None,
            protocol_version=version,
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            server_info=info if isinstance(info, dict) else None,
            instructions=instructions if isinstance(instructions, str) else None,
        )
        notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        notify_ctx = derived_context(
            ctx,
            notification,
            protocol_version=version,
            backend_session_id=session.backend_session_id,
        )
        await finish_unsent(await call_next(notify_ctx), None)
        return session

    async def _cancel_posted(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        key: str,
        params: dict[str, Any],
    ) -> None:
        backend_id = self._in_flight.get((key, id_key(params.get("requestId"))))
        session = await self._sessions.get(key)
        if backend_id is None or session is None:
            return
        reason = params.get("reason")
        await self._cancel(
            ctx,
            call_next,
            session,
            backend_id,
            reason if isinstance(reason, str) else None,
        )

    async def _cancel(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        session: SharedSession,
        backend_id: str,
        reason: str | None,
    ) -> None:
        params: dict[str, Any] = {"requestId": backend_id}
        if reason:
            params["reason"] = reason
        notification = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": params,
        }
        cancel_ctx = derived_context(
            ctx,
            notification,
            protocol_version=session.protocol_version,
            backend_session_id=session.backend_session_id,
        )
        try:
            await finish_unsent(await call_next(cancel_ctx), None)
        except Exception:
            log.exception(
                "bridge.cancel_failed",
                request_id=ctx.request_id,
                backend=ctx.backend_name,
            )
            return
        log.info(
            "bridge.request_cancelled",
            request_id=ctx.request_id,
            backend=ctx.backend_name,
        )


def id_key(request_id: Any) -> str:
    """Return a JSON-RPC id as text that keeps its type: 7 and "7" differ."""
    return encode(request_id).decode()


def _key(ctx: RequestContext) -> str:
    principal: Principal = ctx.fact(PRINCIPAL)
    agent: AgentIdentity = ctx.fact(AGENT)
    return "\n".join((principal.iss, principal.sub, agent.id, ctx.backend_name))


async def _closing(
    stream: AsyncIterator[bytes], inner: AsyncIterator[bytes] | None
) -> AsyncIterator[bytes]:
    # Closes the relayed stream under the transformed one when the client
    # leaves, so the upstream response is released at once.
    try:
        async for chunk in stream:
            yield chunk
    finally:
        await aclose_stream(stream)
        if inner is not None:
            await aclose_stream(inner)


def _discover_response(request_id: Any, session: SharedSession) -> GatewayResponse:
    result: dict[str, Any] = {
        "supportedVersions": list(STATELESS_VERSIONS),
        "capabilities": session.capabilities,
    }
    if session.instructions is not None:
        result["instructions"] = session.instructions
    if session.server_info is not None:
        result["_meta"] = {SERVER_INFO_KEY: session.server_info}
    result = as_stateless_result("server/discover", result)
    body = encode({"jsonrpc": "2.0", "id": request_id, "result": result})
    return GatewayResponse(status=200, headers={"content-type": JSON}, body=body)


def _unavailable(ctx: RequestContext, request_id: Any) -> GatewayResponse:
    text = f"backend {ctx.backend_name} could not start a session"
    return jsonrpc_error_response(
        200,
        request_id,
        INTERNAL_ERROR,
        text,
        reason="backend_session_failed",
        data={"backend": ctx.backend_name},
    )
