"""Case C09: GET opens the server's event stream or gets 405 with ``Allow``.

A GET never gets 404, 400 for a valid session, or 200 with a body
that is not an event stream. The GET stream carries server notifications
and never a response that a POST already delivered. A backend that refuses
the GET (405, or 200 with another type) is not retried in a loop.

Covered elsewhere and not repeated here:

- ``test_transport_sdk.py::test_transport_sdk_get_stream_and_delete_reach_backend``:
  the SDK client's GET reaches the backend session.
- ``test_transport_http.py::test_transport_http_method_accept_and_version_rules``:
  a GET without ``text/event-stream`` in ``Accept`` gets 406.
- ``test_transport_http.py::test_transport_http_chain_exception_jsonrpc_error``:
  a GET that fails inside the gateway gets 405 with ``Allow: POST, DELETE``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from _case_support import (
    SCRIPTED_SESSION,
    Reply,
    ScriptedRequest,
    answer_of,
    case_stack,
    initialize_reply,
    json_reply,
    open_session,
    scripted_stack,
    tools_call,
)
from _transport_harness import MCP_HEADERS

from gateway.mcp.sse import SseParser

pytestmark = pytest.mark.anyio

EVENT_STREAM = {"accept": "text/event-stream"}


async def wait_for_get(requests: list[Any]) -> None:
    with anyio.fail_after(3):
        while not any(r.method == "GET" for r in requests):
            await anyio.sleep(0.01)


async def test_get_with_session_gets_event_stream() -> None:
    """A GET in a valid session gets 200 text/event-stream, never 404 (C09)."""
    async with case_stack() as (gateway, client, controls):
        headers = await open_session(client, gateway.mcp_url)
        async with client.stream(
            "GET", gateway.mcp_url, headers={**headers, **EVENT_STREAM}
        ) as response:
            status = response.status_code
            content_type = response.headers["content-type"]
        gets = [r for r in controls.requests if r.method == "GET"]
    assert status == 200
    assert content_type.startswith("text/event-stream")
    assert len(gets) == 1


async def test_get_stream_has_notifications_never_responses() -> None:
    """Session notifications go on GET; responses only on their own POST (C09)."""
    on_get: list[dict[str, Any]] = []
    got_notification = anyio.Event()

    async def listen(client: httpx.AsyncClient, url: str, headers: Any) -> None:
        parser = SseParser()
        async with client.stream("GET", url, headers=headers) as response:
            async for chunk in response.aiter_raw():
                for event in parser.feed(chunk):
                    if event.data:
                        on_get.append(json.loads(event.data))
                        got_notification.set()

    async with case_stack() as (gateway, client, controls):
        url = gateway.mcp_url
        headers = await open_session(client, url)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(listen, client, url, {**headers, **EVENT_STREAM})
            await wait_for_get(controls.requests)
            await anyio.sleep(0.1)
            announced = await client.post(
                url, json=tools_call(7, "announce_tools_changed"), headers=headers
            )
            echoed = await client.post(
                url, json=tools_call(8, "echo", text="hi"), headers=headers
            )
            with anyio.fail_after(3):
                await got_notification.wait()
            await anyio.sleep(0.2)
            task_group.cancel_scope.cancel()

    assert answer_of(announced)["id"] == 7
    assert answer_of(echoed)["id"] == 8
    assert [m.get("method") for m in on_get] == ["notifications/tools/list_changed"]
    assert all("id" not in message for message in on_get)


def refusing_get_backend(get_reply: Reply) -> Any:
    """Script a backend that works for POST and replies to GET with ``get_reply``."""

    async def script(request: ScriptedRequest) -> Reply:
        if request.method == "GET":
            return get_reply
        if request.method == "DELETE":
            return Reply(200)
        message = request.message
        if message.get("method") == "initialize":
            return initialize_reply(message, SCRIPTED_SESSION)
        if "id" not in message:
            return Reply(202)
        tools = [{"name": "echo", "inputSchema": {"type": "object"}}]
        return json_reply(
            {"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}}
        )

    return script


@pytest.mark.parametrize(
    "get_reply",
    [
        Reply(405, {"allow": "POST, DELETE"}),
        Reply(200, {"content-type": "text/html"}, [b"<html>hello</html>"]),
        Reply(200, {"content-type": "application/json"}, [b"{}"]),
    ],
    ids=["405", "200-html", "200-json"],
)
async def test_backend_without_get_stream_gives_405_once(get_reply: Reply) -> None:
    """A backend offering no GET stream gives 405 with Allow, tried once (C09)."""
    async with scripted_stack(refusing_get_backend(get_reply)) as (
        gateway,
        client,
        backend,
    ):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.get(
            gateway.mcp_url, headers={**headers, **EVENT_STREAM}
        )
        await anyio.sleep(0.3)
        gets = [r for r in backend.requests if r.method == "GET"]
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers=headers,
        )
    assert response.status_code == 405
    allowed = {item.strip() for item in response.headers["allow"].split(",")}
    assert {"POST", "DELETE"} <= allowed
    assert "GET" not in allowed
    assert b"<html>" not in response.content
    assert len(gets) == 1
    assert answer_of(listed)["result"]["tools"][0]["name"] == "echo"


async def test_get_without_session_is_not_404() -> None:
    """A GET without a session id gets 400 or 405, never 404 (C09)."""
    async with case_stack() as (gateway, client, _controls):
        response = await client.get(
            gateway.mcp_url, headers={**MCP_HEADERS, **EVENT_STREAM}
        )
    assert response.status_code in (400, 405)


async def test_modern_get_gets_405_with_allow() -> None:
    """A 2026-07-28 GET gets 405 with Allow, since that revision has no GET (C09)."""
    async with case_stack() as (gateway, client, controls):
        response = await client.get(
            gateway.mcp_url,
            headers={**EVENT_STREAM, "mcp-protocol-version": "2026-07-28"},
        )
        gets = [r for r in controls.requests if r.method == "GET"]
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]
    assert "GET" not in response.headers["allow"]
    assert gets == []
