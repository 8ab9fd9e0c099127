"""Case C18: every response carries the request's id with its exact type and value.

``1`` and ``"1"`` are different ids, big integers stay exact, and ids the
gateway rewrites upstream (to bridge 2026-07-28 clients onto one backend
session) are mapped back before the client sees them.

Covered elsewhere and not repeated here:

- ``test_transport_http.py::test_transport_http_ids_echoed_with_exact_type``:
  ``ping`` with ``0``, ``"0"``, ``1``, ``"1"``, ``9007199254740993`` and
  ``"req-é-🙂"`` through an event-stream backend.
- ``test_transport_http.py::test_transport_http_malformed_bodies_400``:
  ``1.5``, ``null`` and ``true`` ids get 400 -32600 with a null id.
- ``test_transport_faults.py::test_transport_faults_id_in_flight_reused_400``
  and ``test_policy_stages.py::test_id_reused_after_answer_accepted``.
- ``tests/unit/stages/test_authenticate.py::test_authenticate_numeric_id_echoed``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from _case_support import (
    HandshakeOnlyBackend,
    Reply,
    ScriptedRequest,
    answer_of,
    case_stack,
    initialize_reply,
    modern_request,
    open_session,
    scripted_stack,
    session_headers,
    tools_call,
)
from _transport_harness import MCP_HEADERS

pytestmark = pytest.mark.anyio

IDS: list[Any] = [
    0,
    "0",
    1,
    "1",
    -1,
    9007199254740993,
    2**64,
    -(2**63) - 1,
    "req-é-🙂",
    "",
    " 1 ",
]


def raw_post(body: dict[str, Any]) -> bytes:
    # json keeps integers of any size exact; no float ever touches an id.
    return json.dumps(body, ensure_ascii=False).encode()


def assert_same_id(answer: dict[str, Any], request_id: Any) -> None:
    assert answer["id"] == request_id
    assert type(answer["id"]) is type(request_id)


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_ids_exact_through_tools_list_and_call(json_response: bool) -> None:
    """tools/list and tools/call responses echo every id exactly (C18)."""
    async with case_stack(json_response=json_response) as (gateway, client, _c):
        headers = await open_session(client, gateway.mcp_url)
        for request_id in IDS:
            listed = await client.post(
                gateway.mcp_url,
                content=raw_post(
                    {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}
                ),
                headers=headers,
            )
            called = await client.post(
                gateway.mcp_url,
                content=raw_post(tools_call(request_id, "echo", text="x")),
                headers=headers,
            )
            assert_same_id(answer_of(listed), request_id)
            assert_same_id(answer_of(called), request_id)


async def test_gateway_made_errors_keep_id_type() -> None:
    """Errors the gateway builds itself echo the id exactly (C18)."""
    listing: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/list"}
    async with case_stack() as (gateway, client, _controls):
        url = gateway.mcp_url
        for request_id in ("7", 7, "", 2**64):
            body = raw_post({**listing, "id": request_id})
            missing = await client.post(url, content=body, headers=MCP_HEADERS)
            unknown = await client.post(
                url, content=body, headers=session_headers("gw-unknown")
            )
            for response in (missing, unknown):
                assert response.status_code in (400, 404)
                assert_same_id(response.json(), request_id)


async def test_backend_failure_error_keeps_id_type() -> None:
    """A backend failure becomes an error for the exact id (C18).

    The backend is scripted, because the official SDK server does not fail
    with HTTP 500 on demand.
    """

    async def script(request: ScriptedRequest) -> Reply:
        message = request.message
        if message.get("method") == "initialize":
            return initialize_reply(message, "s-1")
        if "id" not in message:
            return Reply(202)
        return Reply(500, {"content-type": "text/plain"}, [b"boom"])

    async with scripted_stack(script) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        for request_id in ("0", 0, "10", 10):
            response = await client.post(
                gateway.mcp_url,
                content=raw_post(
                    {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}
                ),
                headers=headers,
            )
            assert response.status_code == 200
            assert_same_id(response.json(), request_id)
            assert response.json()["error"]["code"] == -32603


@pytest.mark.parametrize(
    "raw_id", [b"1.0", b"1e3", b"-0.0", b"[1]", b'{"a":1}', b"false"]
)
async def test_non_integer_non_string_ids_rejected(raw_id: bytes) -> None:
    """Ids that are neither a string nor an integer get 400 and a null id (C18)."""
    body = b'{"jsonrpc":"2.0","id":' + raw_id + b',"method":"ping"}'
    async with case_stack() as (gateway, client, _controls):
        response = await client.post(gateway.mcp_url, content=body, headers=MCP_HEADERS)
    assert response.status_code == 400
    assert response.json()["id"] is None
    assert response.json()["error"]["code"] == -32600


async def test_same_id_from_two_users_answered_separately() -> None:
    """Two users' concurrent requests with id 1 each get their own response (C18)."""
    answers: dict[str, httpx.Response] = {}

    async def call(client: httpx.AsyncClient, url: str, user: str) -> None:
        headers = await open_session(client, url, **{"x-test-user": user})
        answers[user] = await client.post(
            url, json=tools_call(1, "wait_for_release", tag=user), headers=headers
        )

    async with (
        case_stack() as (gateway, client, controls),
        anyio.create_task_group() as task_group,
    ):
        for user in ("alice", "bob"):
            task_group.start_soon(call, client, gateway.mcp_url, user)
        with anyio.fail_after(3):
            while len(controls.posts("tools/call")) < 2:
                await anyio.sleep(0.01)
        controls.release.set()
    for user in ("alice", "bob"):
        answer = answer_of(answers[user])
        assert_same_id(answer, 1)
        assert answer["result"]["content"][0]["text"] == f"released {user}"


async def test_modern_concurrent_same_ids_bridged_without_collision() -> None:
    """Concurrent 2026-07-28 requests with equal ids share a backend safely (C18).

    One user's 2026-07-28 requests share one handshake-era backend session, so
    the gateway must rewrite their ids upstream and restore them exactly.
    """
    backend = HandshakeOnlyBackend()
    answers: dict[str, dict[str, Any]] = {}
    cases: list[tuple[str, Any, float]] = [
        ("slow", 1, 0.4),
        ("fast", 1, 0.0),
        ("text", "1", 0.2),
    ]

    async def call(client: httpx.AsyncClient, url: str, case: Any) -> None:
        name, request_id, delay = case
        body, headers = modern_request(
            request_id,
            "tools/call",
            {"name": "echo", "arguments": {"text": name, "delay": delay}},
        )
        response = await client.post(url, json=body, headers=headers)
        answers[name] = answer_of(response)

    async with (
        scripted_stack(backend) as (gateway, client, _scripted),
        anyio.create_task_group() as task_group,
    ):
        for case in cases:
            task_group.start_soon(call, client, gateway.mcp_url, case)
    for name, request_id, _delay in cases:
        assert_same_id(answers[name], request_id)
        assert answers[name]["result"]["content"][0]["text"] == name
    upstream = [json.dumps(i) for i in backend.seen_ids]
    assert len(set(upstream)) == len(upstream)
    assert len(backend.sessions) == 1
