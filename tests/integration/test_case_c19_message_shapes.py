"""Case C19: batches and bodies that are not one JSON-RPC object get a clean 400.

The gateway supports no JSON-RPC batches, on any protocol revision: MCP
removed them in 2025-06-18, and a 2025-03-26 client's batch gets the same
400 -32600 as any other. Bodies that are not one JSON object get 400 with
-32600 (or -32700 when they are not JSON) and a null id, or the id when it
could be read. None of them reaches the backend, gets a 5xx, or is judged
by authorization before its shape.

Covered elsewhere and not repeated here:

- ``test_transport_http.py::test_transport_http_malformed_bodies_400``:
  cases 1 and 3 to 8 (batch, ``[]``, ``null``, ``"hello"``, ``42``, an
  object that is neither request nor response, truncated JSON) without a
  session.
- ``test_transport_faults.py::test_transport_faults_deep_json_400_with_event``.
- ``tests/e2e/test_gateway_errors.py``:
  ``test_batch_array_gets_400_invalid_request`` and
  ``test_malformed_json_gets_400_parse_error``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from _case_support import (
    bearer,
    case_stack,
    modern_request,
    open_session,
    sign_in,
)
from _transport_harness import initialize_body

from gateway.demo.runner import DemoStack, run_demo

pytestmark = pytest.mark.anyio

REQUEST_BATCH = (
    b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
    b'{"jsonrpc":"2.0","id":2,"method":"prompts/list"}]'
)
NOTIFICATION_BATCH = b'[{"jsonrpc":"2.0","method":"notifications/initialized"}]'


def assert_invalid(response: httpx.Response, code: int, request_id: Any) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == request_id
    assert body["error"]["code"] == code


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", "2025-11-25"])
@pytest.mark.parametrize(
    "batch", [REQUEST_BATCH, NOTIFICATION_BATCH], ids=["requests", "notification"]
)
async def test_batch_in_session_rejected_any_revision(
    version: str, batch: bytes
) -> None:
    """A batch in a live session gets 400 -32600 on every revision (C19)."""
    async with case_stack() as (gateway, client, controls):
        headers = await open_session(client, gateway.mcp_url, version)
        before = len(controls.requests)
        response = await client.post(gateway.mcp_url, content=batch, headers=headers)
        after = len(controls.requests)
    assert_invalid(response, -32600, None)
    assert "batch" in response.json()["error"]["message"]
    assert after == before


@pytest.mark.parametrize(
    ("body", "code", "request_id"),
    [
        (b"true", -32600, None),
        (b"{}", -32600, None),
        (b'{"jsonrpc":"2.0"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":1,"method":42}', -32600, 1),
        (b'{"jsonrpc":"2.0","id":2,"method":"tools/list","params":[1]}', -32600, 2),
        (b'{"jsonrpc":"2.0","id":"r","result":{},"method":""}', -32600, "r"),
        (b"", -32700, None),
        (b"   \r\n", -32700, None),
        (b'{"jsonrpc":"2.0","id":3,"method":"\xff\xfe"}', -32700, None),
        (b"[[]]", -32600, None),
    ],
    ids=[
        "true",
        "empty-object",
        "no-method",
        "numeric-method",
        "array-params",
        "empty-method",
        "empty-body",
        "whitespace",
        "invalid-utf8",
        "nested-array",
    ],
)
async def test_bad_body_in_session_gets_400(
    body: bytes, code: int, request_id: Any
) -> None:
    """Each bad body in a live session gets 400 with the right code and id (C19)."""
    async with case_stack() as (gateway, client, controls):
        headers = await open_session(client, gateway.mcp_url)
        before = len(controls.requests)
        response = await client.post(gateway.mcp_url, content=body, headers=headers)
        after = len(controls.requests)
        still_works = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 9, "method": "ping"},
            headers=headers,
        )
    assert_invalid(response, code, request_id)
    assert after == before
    assert still_works.status_code == 200


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    var_dir = tmp_path_factory.mktemp("demo")
    async with run_demo(ephemeral=True, var_dir=var_dir) as running:
        yield running


async def test_shape_checked_before_tool_policy(demo: DemoStack) -> None:
    """A batch naming a denied tool gets 400, not a policy decision (C19)."""
    storage = await sign_in(demo, "employees", client_name="claude-code")
    assert storage.tokens is not None
    url = demo.mcp_url("employees")
    token = storage.tokens.access_token
    denied_call = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "tools/call",
        "params": {"name": "update_salary", "arguments": {}},
    }
    async with httpx.AsyncClient(timeout=10.0) as client:
        opened = await client.post(
            url, content=msgspec.json.encode(initialize_body()), headers=bearer(token)
        )
        session = bearer(
            token,
            **{
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-06-18",
            },
        )
        batch = await client.post(
            url, content=msgspec.json.encode([denied_call]), headers=session
        )
        scalar = await client.post(url, content=b'"update_salary"', headers=session)
        single = await client.post(
            url, content=msgspec.json.encode(denied_call), headers=session
        )
    assert_invalid(batch, -32600, None)
    assert_invalid(scalar, -32600, None)
    assert single.status_code == 200
    assert "error" in single.json()


async def test_modern_batch_rejected_400() -> None:
    """A 2026-07-28 batch gets the same 400 -32600 (C19)."""
    first, headers = modern_request(1, "tools/list")
    second, _headers = modern_request(2, "tools/list")
    async with case_stack() as (gateway, client, controls):
        response = await client.post(
            gateway.mcp_url,
            content=msgspec.json.encode([first, second]),
            headers=headers,
        )
        forwarded = len(controls.requests)
    assert_invalid(response, -32600, None)
    assert forwarded == 0
