"""Case C06: backend sessions belong to one user and agent, never to token bytes.

Users who reach a backend with the same shared credential still get separate
backend sessions. A session is bound to the validated principal (issuer and
subject) and the agent, so a refreshed token keeps it, and another user's
token on it gets the same 404 as an unknown session.

Covered elsewhere and not repeated here:

- ``test_transport_http.py::test_transport_http_session_errors_400_and_404``:
  another user's session id gets a 404 identical to an unknown id, and the
  owner's next request still works.
- ``tests/e2e/test_backend_token.py``,
  ``test_bob_and_alice_get_their_own_backend_identity``: each user reaches
  an ID-JAG backend as themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _case_support import (
    HandshakeOnlyBackend,
    answer_of,
    bearer,
    case_stack,
    modern_request,
    open_session,
    refresh_access_token,
    scripted_stack,
    sign_in,
    tools_call,
)
from _transport_harness import initialize_body

from gateway.demo.runner import DemoStack, run_demo

pytestmark = pytest.mark.anyio

ALICE = {"x-test-user": "alice"}
BOB = {"x-test-user": "bob"}


def tool_text(response: httpx.Response) -> str:
    answer = answer_of(response)
    assert "result" in answer, answer
    return str(answer["result"]["content"][0]["text"])


async def test_users_with_shared_backend_key_get_own_sessions() -> None:
    """Two users behind one shared backend key never share state (C06)."""
    async with case_stack() as (gateway, client, controls):
        url = gateway.mcp_url
        alice = await open_session(client, url, **ALICE)
        bob = await open_session(client, url, **BOB)
        for _ in range(3):
            await client.post(
                url, json=tools_call(5, "counter_increment"), headers=alice
            )
        bob_count = await client.post(
            url, json=tools_call(5, "counter_get"), headers=bob
        )
        alice_count = await client.post(
            url, json=tools_call(6, "counter_get"), headers=alice
        )
        initializes = controls.posts("initialize")
        keys = {r.headers["x-api-key"] for r in controls.requests}
    assert tool_text(bob_count) == "0"
    assert tool_text(alice_count) == "3"
    assert len(initializes) == 2
    assert len(keys) == 1
    backend_ids = {
        r.headers["mcp-session-id"]
        for r in controls.posts("tools/call")
        if "mcp-session-id" in r.headers
    }
    assert len(backend_ids) == 2


async def test_cancel_by_one_user_leaves_other_call_running() -> None:
    """Cancelling id 5 in one user's session leaves the other's id 5 alone (C06)."""
    results: dict[str, httpx.Response] = {}

    async def call(name: str, url: str, headers: dict[str, str]) -> None:
        results[name] = await client.post(
            url, json=tools_call(5, "wait_for_release", tag=name), headers=headers
        )

    async with case_stack() as (gateway, client, controls):
        url = gateway.mcp_url
        alice = await open_session(client, url, **ALICE)
        bob = await open_session(client, url, **BOB)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(call, "alice", url, alice)
            task_group.start_soon(call, "bob", url, bob)
            with anyio.fail_after(3):
                while len(controls.posts("tools/call")) < 2:
                    await anyio.sleep(0.01)
            cancel = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 5, "reason": "user stopped it"},
            }
            cancelled = await client.post(url, json=cancel, headers=alice)
            with anyio.fail_after(3):
                while not controls.cancelled:
                    await anyio.sleep(0.01)
            controls.release.set()
        assert cancelled.status_code == 202
        assert controls.cancelled == ["alice"]
        assert controls.finished == ["bob"]
        assert tool_text(results["bob"]) == "released bob"


async def test_same_user_other_agent_session_refused() -> None:
    """A session of one agent is refused to another agent of the same user (C06)."""
    async with case_stack() as (gateway, client, controls):
        url = gateway.mcp_url
        owner = await open_session(client, url, **{"x-test-agent": "cursor"})
        other_agent = {**owner, "x-test-agent": "claude-code"}
        listing = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
        calls_before = len(controls.requests)
        refused = await client.post(url, json=listing, headers=other_agent)
        calls_after = len(controls.requests)
        unknown = await client.post(
            url, json=listing, headers={**owner, "mcp-session-id": "gw-unknown"}
        )
        owner_again = await client.post(url, json=listing, headers=owner)
    assert refused.status_code == 404
    assert refused.content == unknown.content
    assert calls_after == calls_before
    assert owner_again.status_code == 200


async def test_modern_clients_bridged_to_own_backend_sessions() -> None:
    """2026-07-28 clients get one handshake backend session per user (C06)."""
    backend = HandshakeOnlyBackend()

    def counter(request_id: int, name: str) -> tuple[Any, dict[str, str]]:
        return modern_request(request_id, "tools/call", {"name": name, "arguments": {}})

    async with scripted_stack(backend) as (gateway, client, _scripted):
        url = gateway.mcp_url
        texts: dict[str, str] = {}
        for request_id, user, name in (
            (1, "alice", "counter_increment"),
            (2, "alice", "counter_increment"),
            (3, "bob", "counter_get"),
            (4, "alice", "counter_get"),
        ):
            body, headers = counter(request_id, name)
            response = await client.post(
                url, json=body, headers={**headers, "x-test-user": user}
            )
            assert response.status_code == 200, response.text
            texts[f"{user}-{request_id}"] = tool_text(response)
    assert texts["bob-3"] == "0"
    assert texts["alice-4"] == "2"
    assert len(backend.sessions) == 2


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    var_dir = tmp_path_factory.mktemp("demo")
    async with run_demo(ephemeral=True, var_dir=var_dir) as running:
        yield running


async def start_session(url: str, token: str) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            url, content=msgspec.json.encode(initialize_body()), headers=bearer(token)
        )
    assert response.status_code == 200, response.text
    return {
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-06-18",
    }


async def post(
    url: str, token: str, session: dict[str, str], body: Any
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.post(
            url,
            content=msgspec.json.encode(body),
            headers=bearer(token, **session),
        )


async def test_refreshed_token_keeps_its_session(demo: DemoStack) -> None:
    """A refreshed access token (new bytes, same user) keeps the session (C06)."""
    url = demo.mcp_url("partners")
    storage = await sign_in(demo, "partners", user="alice")
    assert storage.tokens is not None
    first_token = storage.tokens.access_token
    session = await start_session(url, first_token)
    refreshed = await refresh_access_token(demo, storage)
    listing = {"jsonrpc": "2.0", "id": 6, "method": "tools/list"}
    response = await post(url, refreshed, session, listing)
    assert refreshed != first_token
    assert response.status_code == 200
    assert "tools" in answer_of(response)["result"]


async def test_other_user_token_on_session_gets_404(demo: DemoStack) -> None:
    """Bob's valid token on Alice's session gets 404 and runs nothing (C06)."""
    url = demo.mcp_url("partners")
    alice = await sign_in(demo, "partners", user="alice")
    bob = await sign_in(demo, "partners", user="bob")
    assert alice.tokens is not None
    assert bob.tokens is not None
    session = await start_session(url, alice.tokens.access_token)
    listing = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
    stolen = await post(url, bob.tokens.access_token, session, listing)
    unknown = await post(
        url,
        bob.tokens.access_token,
        {**session, "mcp-session-id": "gw-never-issued"},
        listing,
    )
    owner = await post(url, alice.tokens.access_token, session, listing)
    assert stolen.status_code == 404
    assert stolen.json()["error"] == unknown.json()["error"]
    assert owner.status_code == 200
