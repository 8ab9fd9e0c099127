"""Case C26: failures after a request was accepted are JSON-RPC responses in 200.

A tool's own failure passes through as its ``isError`` result. A backend
that is down, slow, answering 5xx or HTML, or answering with a body that is
not JSON-RPC, gives a ``tools/call`` an ``isError`` result and any other
request a -32603 error, both with HTTP 200 and the request's id, and the
session keeps working. Nothing of the backend's body (stack traces, tokens,
internal host names) reaches the client.

Covered elsewhere and not repeated here:

- ``test_transport_sdk.py::test_transport_sdk_tool_error_passes_as_is_error``.
- ``test_transport_http.py::test_transport_http_backend_down_jsonrpc_error_in_200``:
  connection refused for ``tools/call`` and ``tools/list``.
- ``test_transport_faults.py``: ``test_transport_faults_answer_to_other_id_replaced``
  and ``test_transport_faults_unanswered_stream_gets_answer_event``.
- ``test_policy_stages.py::test_denied_tool_names_tool_and_rule``: a tool
  refused by policy is a JSON-RPC error in 200.
- The HTTP statuses that remain (400, 401, 403, 404, 405, 406, 413) have
  their own case files and ``test_transport_http.py`` tests.

The scripted backend is used for replies the official SDK server never
sends: HTML error pages, bodies that are not JSON-RPC, a reply that never
comes.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _case_support import (
    SCRIPTED_SESSION,
    Reply,
    ScriptedRequest,
    answer_of,
    case_stack,
    initialize_reply,
    json_reply,
    modern_request,
    open_session,
    scripted_stack,
    tools_call,
)
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    initialize_body,
    running_backend,
    running_gateway,
)

pytestmark = pytest.mark.anyio

LEAKY_PAGE = (
    b"<html><body><h1>502 Bad Gateway</h1><pre>Traceback (most recent call last):\n"
    b'  File "/srv/b1.internal/app.py", line 3\n'
    b"Authorization: Bearer sk-live-secret</pre></body></html>"
)
RECOVERED = "recovered"


class FailingBackend:
    """A backend that serves initialize and ping, and fails everything else.

    ``failure`` selects the failure: ``html_502``, ``slow`` (no reply within
    the gateway's timeout), ``not_jsonrpc`` (200 JSON that is no JSON-RPC),
    ``text_200``, ``conflict_409`` or ``jsonrpc_400`` (a JSON-RPC error with
    status 400). Setting it to None makes every request succeed.
    """

    def __init__(self, failure: str | None) -> None:
        self.failure = failure

    async def __call__(self, request: ScriptedRequest) -> Reply:
        message = request.message
        if message.get("method") == "initialize":
            return initialize_reply(message, SCRIPTED_SESSION)
        if "id" not in message:
            return Reply(202)
        if self.failure is None or message.get("method") == "ping":
            text = {"content": [{"type": "text", "text": RECOVERED}]}
            return json_reply({"jsonrpc": "2.0", "id": message["id"], "result": text})
        return await self._fail(message)

    async def _fail(self, message: dict[str, Any]) -> Reply:
        if self.failure == "html_502":
            return Reply(502, {"content-type": "text/html"}, [LEAKY_PAGE])
        if self.failure == "slow":
            await anyio.sleep(3)
            return Reply(200)
        if self.failure == "not_jsonrpc":
            return json_reply({"Output": "Bearer sk-live-secret", "Version": "1"})
        if self.failure == "text_200":
            return Reply(200, {"content-type": "text/plain"}, [b"OK b1.internal"])
        if self.failure == "conflict_409":
            return Reply(409, {"content-type": "text/plain"}, [b"record locked"])
        error = {"code": -32602, "message": "Invalid params: t is required"}
        return json_reply({"jsonrpc": "2.0", "id": message["id"], "error": error}, 400)


def assert_no_leak(response: httpx.Response, backend_url: str) -> None:
    for secret in ("sk-live-secret", "Traceback", "b1.internal", "<html"):
        assert secret not in response.text
    assert backend_url.split("//", 1)[1].split("/", 1)[0] not in response.text


@pytest.mark.parametrize(
    "failure", ["html_502", "slow", "not_jsonrpc", "text_200", "conflict_409"]
)
async def test_backend_failure_jsonrpc_answer_in_200(failure: str) -> None:
    """Backend failures become isError or -32603 answers with HTTP 200 (C26)."""
    backend = FailingBackend(failure)
    async with scripted_stack(backend, backend_timeout=0.5) as (
        gateway,
        client,
        scripted,
    ):
        backend_url = gateway.runtime.config.backends["employees"].url
        headers = await open_session(client, gateway.mcp_url)
        called = await client.post(
            gateway.mcp_url, json=tools_call(9, "echo", t="x"), headers=headers
        )
        read = await client.post(
            gateway.mcp_url,
            json={
                "jsonrpc": "2.0",
                "id": 10,
                "method": "resources/read",
                "params": {"uri": "file:///x"},
            },
            headers=headers,
        )
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 13, "method": "tools/list"},
            headers=headers,
        )
        backend.failure = None
        recovered = await client.post(
            gateway.mcp_url, json=tools_call(14, "echo"), headers=headers
        )

    assert called.status_code == 200
    call_answer = answer_of(called)
    assert call_answer["id"] == 9
    assert call_answer["result"]["isError"] is True
    assert "backend employees" in call_answer["result"]["content"][0]["text"]
    for response, request_id in ((read, 10), (listed, 13)):
        assert response.status_code == 200
        answer = answer_of(response)
        assert answer["id"] == request_id
        assert answer["error"]["code"] == -32603
        assert answer["error"]["message"].startswith("backend employees")
        assert answer["error"]["data"]["reason"].startswith("backend_")
    for response in (called, read, listed):
        assert_no_leak(response, backend_url)
    assert answer_of(recovered)["result"]["content"][0]["text"] == RECOVERED
    assert len(scripted.posts("initialize")) == 1


async def test_backend_jsonrpc_error_with_4xx_relayed_in_200() -> None:
    """A backend's JSON-RPC error sent with HTTP 400 reaches the client in 200 (C26)."""
    async with scripted_stack(FailingBackend("jsonrpc_400")) as (gateway, client, _b):
        headers = await open_session(client, gateway.mcp_url)
        called = await client.post(
            gateway.mcp_url, json=tools_call("c-11", "echo"), headers=headers
        )
    assert called.status_code == 200
    answer = answer_of(called)
    assert answer["id"] == "c-11"
    assert answer["error"]["code"] == -32602
    assert answer["error"]["message"] == "Invalid params: t is required"


async def test_unknown_tool_and_method_answered_in_200() -> None:
    """An unknown tool or method gets the backend's JSON-RPC answer in 200 (C26).

    The official SDK server answers an unknown tool with an ``isError``
    result and an unknown method with -32601; the gateway relays both.
    """
    async with case_stack() as (gateway, client, _controls):
        headers = await open_session(client, gateway.mcp_url)
        tool = await client.post(
            gateway.mcp_url, json=tools_call(11, "no_such_tool"), headers=headers
        )
        method = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 12, "method": "no/such"},
            headers=headers,
        )
    assert tool.status_code == 200
    tool_answer = answer_of(tool)
    assert tool_answer["id"] == 11
    unknown_tool_error = tool_answer.get("error", {}).get("code") == -32602
    assert unknown_tool_error or tool_answer["result"]["isError"] is True
    assert method.status_code == 200
    assert answer_of(method)["id"] == 12
    assert answer_of(method)["error"]["code"] == -32601


async def test_tool_error_result_relayed_unchanged() -> None:
    """A tool's isError result reaches the client as the backend sent it (C26)."""
    call = msgspec.json.encode(tools_call(8, "fail", reason="conflict: record locked"))
    controls = BackendControls()
    async with (
        running_backend(controls, json_response=True) as backend_url,
        running_gateway(backend_url) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        through_gateway = await client.post(
            gateway.mcp_url,
            content=call,
            headers=await open_session(client, gateway.mcp_url),
        )
        opened = await client.post(
            backend_url, json=initialize_body(), headers=MCP_HEADERS
        )
        direct_headers = {
            **MCP_HEADERS,
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-06-18",
        }
        await client.post(
            backend_url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=direct_headers,
        )
        direct = await client.post(backend_url, content=call, headers=direct_headers)
    assert through_gateway.status_code == 200
    assert answer_of(through_gateway) == answer_of(direct)
    assert answer_of(through_gateway)["result"]["isError"] is True


async def test_modern_request_backend_down_answered_in_200() -> None:
    """A 2026-07-28 request to a backend that is down gets a 200 response (C26)."""
    async with (
        running_gateway("http://127.0.0.1:9/mcp", backend_timeout=1.0) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        call_body, call_headers = modern_request(
            9, "tools/call", {"name": "echo", "arguments": {"text": "x"}}
        )
        called = await client.post(
            gateway.mcp_url, json=call_body, headers=call_headers
        )
        list_body, list_headers = modern_request(13, "tools/list")
        listed = await client.post(
            gateway.mcp_url, json=list_body, headers=list_headers
        )
    assert called.status_code == 200
    assert answer_of(called)["id"] == 9
    assert answer_of(called)["result"]["isError"] is True
    assert listed.status_code == 200
    assert answer_of(listed)["id"] == 13
    assert answer_of(listed)["error"]["code"] == -32603
