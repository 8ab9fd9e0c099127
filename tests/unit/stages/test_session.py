"""The session store and the session stage, with the forward stage behind it.

The backend is a scripted MCP-like app (see :mod:`data_path_support`) that
keeps a set of live session ids and can forget them, which is how a backend
restart looks from the gateway. The integration tests restart a real
official-SDK server for the same case.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import pytest

from gateway.context import RequestContext
from gateway.events import SessionCreated, SessionEnded, SessionRejected, SessionResumed
from gateway.facts import PRINCIPAL, Principal
from gateway.mcp.response import GatewayResponse
from gateway.sessions import SessionStore, is_valid_session_id
from gateway.stages.forward import ForwardStage
from gateway.stages.session import SessionStage, session_ref
from gateway.store import MemoryStore
from pipeline import Chain
from pipeline.stage import NoConfig

from .data_path_support import (
    DataPath,
    ScriptedBackend,
    Send,
    data_path,
    json_reply,
    make_context,
)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {"roots": {}},
        "clientInfo": {"name": "unit", "version": "1"},
    },
}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}

# Session store -----------------------------------------------------------------

BINDING = {"user_iss": "https://idp.test", "user_sub": "alice", "agent_id": "cursor"}


async def new_record(store: SessionStore, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        **BINDING,
        "backend": "employees",
        "backend_session_id": "b-1",
    }
    values.update(overrides)
    return await store.create(**values)


@pytest.mark.anyio
async def test_session_store_ids_random_visible_ascii() -> None:
    """Minted ids are distinct, long and visible ASCII."""
    store = SessionStore(MemoryStore())
    ids = {(await new_record(store)).gateway_session_id for _ in range(50)}
    assert len(ids) == 50
    for session_id in ids:
        assert len(session_id) >= 43
        assert all(0x21 <= ord(char) <= 0x7E for char in session_id)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "other",
    [
        {"user_sub": "bob"},
        {"user_iss": "https://other-idp.test"},
        {"agent_id": "claude-code"},
        {"backend": "partners"},
    ],
)
async def test_session_store_binding_mismatch_not_found(other: dict[str, str]) -> None:
    """Another user, issuer, agent or backend cannot look the session up."""
    store = SessionStore(MemoryStore())
    record = await new_record(store)
    binding = {**BINDING, "backend": "employees"}
    assert await store.get_bound(record.gateway_session_id, **binding) is not None
    assert (
        await store.get_bound(record.gateway_session_id, **{**binding, **other}) is None
    )


@pytest.mark.anyio
async def test_session_store_delete_ends_session() -> None:
    """A deleted session is gone."""
    store = SessionStore(MemoryStore())
    record = await new_record(store)
    await store.delete(record.gateway_session_id)
    assert await store.get(record.gateway_session_id) is None


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["", "has space", "tab\there", "é", "x" * 300])
async def test_session_store_malformed_id_unknown(value: str) -> None:
    """Ids that are not visible ASCII of sane length are unknown without a lookup."""
    store = SessionStore(MemoryStore())
    assert not is_valid_session_id(value)
    assert await store.get(value) is None


@pytest.mark.anyio
async def test_session_store_expiry_slides_on_touch() -> None:
    """Touching extends the expiry; an untouched session expires after ttl."""
    store = SessionStore(MemoryStore(), ttl=0.3)
    touched = await new_record(store)
    dropped = await new_record(store)
    await anyio.sleep(0.2)
    await store.touch(touched)
    await anyio.sleep(0.2)
    assert await store.get(touched.gateway_session_id) is not None
    assert await store.get(dropped.gateway_session_id) is None


# Session stage -----------------------------------------------------------------


@dataclass
class MiniMcpBackend:
    """Responds like a sessionful MCP server and can drop its sessions.

    ``initialize`` creates a session, notifications get 202, other requests
    get a result naming their session, or 404 when their session is unknown.
    ``lose_requests`` makes every request get 404 and ``fail_initialize``
    makes ``initialize`` get 503.
    """

    stateless: bool = False
    lose_requests: bool = False
    fail_initialize: bool = False
    live: set[str] = field(default_factory=set)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        request = self.app.received[-1]
        session_id = request.headers.get("mcp-session-id")
        if scope["method"] == "DELETE":
            self.live.discard(session_id or "")
            await json_reply(200, b"")(scope, receive, send)
            return
        message = json.loads(request.body)
        if message.get("method") == "initialize" and self.fail_initialize:
            await json_reply(503, b"")(scope, receive, send)
            return
        if message.get("method") == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {}}
            headers = {}
            if not self.stateless:
                new_id = f"b-{next(self.counter)}"
                self.live.add(new_id)
                headers["mcp-session-id"] = new_id
            body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            await json_reply(200, body, headers)(scope, receive, send)
            return
        lost = self.lose_requests and "id" in message
        if lost or (not self.stateless and session_id not in self.live):
            error = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32001, "message": "gone"},
            }
            await json_reply(404, error)(scope, receive, send)
            return
        if "id" not in message:
            await json_reply(202, b"")(scope, receive, send)
            return
        body = {
            "jsonrpc": "2.0",
            "id": message["id"],
            "result": {"session": session_id},
        }
        await json_reply(200, body)(scope, receive, send)

    app: ScriptedBackend = field(init=False)


def mini_backend(stateless: bool = False) -> tuple[ScriptedBackend, MiniMcpBackend]:
    mini = MiniMcpBackend(stateless=stateless)
    app = ScriptedBackend(default=mini)
    mini.app = app
    return app, mini


def chain_for(path: DataPath) -> Chain[RequestContext, GatewayResponse]:
    runtime = path.runtime
    return Chain(
        [
            SessionStage(name="session", config=NoConfig(), resources=runtime),
            ForwardStage(name="forward", config=NoConfig(), resources=runtime),
        ]
    )


async def initialize(
    path: DataPath, chain: Any, headers: dict[str, str] | None = None
) -> GatewayResponse:
    return await chain(make_context(path.runtime, message=INITIALIZE, headers=headers))


async def call(
    path: DataPath, chain: Any, session_id: str | None, **kwargs: Any
) -> GatewayResponse:
    headers = {"mcp-session-id": session_id} if session_id else {}
    return await chain(
        make_context(
            path.runtime,
            message=kwargs.pop("message", TOOLS_LIST),
            headers=headers,
            **kwargs,
        )
    )


@pytest.mark.anyio
async def test_session_initialize_mints_gateway_id() -> None:
    """Initialize stores the mapping and returns a gateway id, not the backend's."""
    app, _mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        response = await initialize(path, chain, {"mcp-session-id": "stale-client-id"})
        gateway_id = response.headers["mcp-session-id"]
        record = await path.runtime.sessions.get(gateway_id)
        events = await path.settle()
    assert record is not None
    assert record.backend_session_id == "b-1"
    assert gateway_id != "b-1"
    assert record.initialize_params == INITIALIZE["params"]
    assert record.protocol_version == "2025-06-18"
    assert "mcp-session-id" not in app.received[0].headers
    created = [e for e in events if isinstance(e, SessionCreated)]
    assert [e.session for e in created] == [session_ref(gateway_id)]
    assert gateway_id not in msgspec.json.encode(events).decode()


@pytest.mark.anyio
async def test_session_initialize_error_creates_no_session() -> None:
    """An initialize that gets a JSON-RPC error creates no session."""
    error = {
        "jsonrpc": "2.0",
        "id": 0,
        "error": {"code": -32602, "message": "bad version"},
    }
    app = ScriptedBackend(replies=[json_reply(200, error, {"mcp-session-id": "b-x"})])
    async with data_path(app) as path:
        response = await initialize(path, chain_for(path))
        count = await path.runtime.store.count("session")
    assert "mcp-session-id" not in response.headers
    assert count == 0


@pytest.mark.anyio
async def test_session_request_translated_to_backend_id() -> None:
    """A request with the gateway id reaches the backend with the backend id."""
    app, _mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        response = await call(path, chain, gateway_id)
        events = await path.settle()
    assert json.loads(response.body)["result"] == {"session": "b-1"}
    assert app.received[-1].headers["mcp-session-id"] == "b-1"
    assert any(isinstance(e, SessionResumed) for e in events)


@pytest.mark.anyio
async def test_session_missing_id_400() -> None:
    """A request without Mcp-Session-Id gets 400 missing_session with its id."""
    app, _mini = mini_backend()
    async with data_path(app) as path:
        response = await call(path, chain_for(path), None)
        events = await path.settle()
    body = json.loads(response.body)
    assert response.status == 400
    assert body["id"] == 5
    assert body["error"]["data"]["reason"] == "missing_session"
    assert app.received == []
    assert [e.status for e in events if isinstance(e, SessionRejected)] == [400]


@pytest.mark.anyio
async def test_session_unknown_and_foreign_ids_same_404() -> None:
    """An unknown id and another user's id get the same 404 body."""
    app, _mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        alice_id = (await initialize(path, chain)).headers["mcp-session-id"]
        sent_before = len(app.received)
        unknown = await call(path, chain, "no-such-session")
        stolen = await call(path, chain, alice_id, user="bob")
        other_agent = await call(path, chain, alice_id, agent="claude-code")
        still_alice = await call(path, chain, alice_id)
    for response in (unknown, stolen, other_agent):
        assert response.status == 404
        assert response.body == unknown.body
    assert json.loads(unknown.body)["error"]["data"]["reason"] == "unknown_session"
    assert len(app.received) == sent_before + 1
    assert still_alice.status == 200


@pytest.mark.anyio
async def test_session_refreshed_token_keeps_session() -> None:
    """A new access token for the same user keeps the session (no token binding)."""
    app, _mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        ctx = make_context(
            path.runtime, message=TOOLS_LIST, headers={"mcp-session-id": gateway_id}
        )
        ctx.provide(
            PRINCIPAL,
            Principal(
                iss="https://idp.test",
                sub="alice",
                client_id="c",
                grant_id="g",
                token_id="new-jti",
            ),
        )
        response = await chain(ctx)
    assert response.status == 200


@pytest.mark.anyio
async def test_session_backend_forgot_session_reinitialized_once() -> None:
    """A backend 404 re-initializes with the stored params and retries the request."""
    app, mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        mini.live.clear()
        response = await call(path, chain, gateway_id)
        record = await path.runtime.sessions.get(gateway_id)

    sent = [
        (r.method, json.loads(r.body).get("method") if r.body else None)
        for r in app.received
    ]
    assert sent == [
        ("POST", "initialize"),
        ("POST", "tools/list"),
        ("POST", "initialize"),
        ("POST", "notifications/initialized"),
        ("POST", "tools/list"),
    ]
    reinit = app.received[2]
    assert "mcp-session-id" not in reinit.headers
    assert json.loads(reinit.body)["params"] == INITIALIZE["params"]
    assert app.received[3].headers["mcp-session-id"] == "b-2"
    assert app.received[3].headers["mcp-protocol-version"] == "2025-06-18"
    assert json.loads(response.body) == {
        "jsonrpc": "2.0",
        "id": 5,
        "result": {"session": "b-2"},
    }
    assert record is not None
    assert record.backend_session_id == "b-2"


@pytest.mark.anyio
async def test_session_backend_404_after_retry_no_loop() -> None:
    """When the retried request gets 404 again, the client gets one error."""
    app, mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        mini.lose_requests = True
        response = await call(path, chain, gateway_id)
    body = json.loads(response.body)
    assert response.status == 200
    assert body["id"] == 5
    assert body["error"]["data"]["reason"] == "backend_session_not_found"
    assert len(app.received) == 5


@pytest.mark.anyio
async def test_session_reinitialize_rejected_returns_error() -> None:
    """When the backend rejects the new initialize, the first response is returned."""
    app, mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        mini.live.clear()
        mini.fail_initialize = True
        response = await call(path, chain, gateway_id)
        record = await path.runtime.sessions.get(gateway_id)
    assert json.loads(response.body)["error"]["data"]["reason"] == (
        "backend_session_not_found"
    )
    assert len(app.received) == 3
    assert record is not None
    assert record.backend_session_id == "b-1"


@pytest.mark.anyio
async def test_session_concurrent_404s_share_one_reinitialize() -> None:
    """Requests failing on the same lost backend session renew it only once."""
    app, mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        mini.live.clear()
        results: list[GatewayResponse] = []

        async def one(request_id: int) -> None:
            message = {**TOOLS_LIST, "id": request_id}
            results.append(await call(path, chain, gateway_id, message=message))

        async with anyio.create_task_group() as group:
            for request_id in range(4):
                group.start_soon(one, request_id)
    initializes = [r for r in app.received if r.body and b'"initialize"' in r.body]
    assert len(initializes) == 2
    assert all(r.status == 200 for r in results)
    assert all(json.loads(r.body)["result"] == {"session": "b-2"} for r in results)


@pytest.mark.anyio
async def test_session_delete_ends_both_sides() -> None:
    """DELETE ends the backend session, removes the mapping and returns 204."""
    app, mini = mini_backend()
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        deleted = await chain(
            make_context(
                path.runtime, method="DELETE", headers={"mcp-session-id": gateway_id}
            )
        )
        again = await call(path, chain, gateway_id)
        events = await path.settle()
    assert deleted.status == 204
    assert app.received[1].method == "DELETE"
    assert app.received[1].headers["mcp-session-id"] == "b-1"
    assert mini.live == set()
    assert again.status == 404
    assert [e.session for e in events if isinstance(e, SessionEnded)] == [
        session_ref(gateway_id)
    ]


@pytest.mark.anyio
async def test_session_stateless_backend_mapping_without_backend_id() -> None:
    """A backend that issues no session id still gets a gateway session."""
    app, _mini = mini_backend(stateless=True)
    async with data_path(app) as path:
        chain = chain_for(path)
        gateway_id = (await initialize(path, chain)).headers["mcp-session-id"]
        record = await path.runtime.sessions.get(gateway_id)
        response = await call(path, chain, gateway_id)
        deleted = await chain(
            make_context(
                path.runtime, method="DELETE", headers={"mcp-session-id": gateway_id}
            )
        )
    assert record is not None
    assert record.backend_session_id is None
    assert response.status == 200
    assert "mcp-session-id" not in app.received[1].headers
    assert deleted.status == 204
    assert [r.method for r in app.received] == ["POST", "POST"]
