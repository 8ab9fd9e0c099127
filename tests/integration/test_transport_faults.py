"""Faulty clients and backends at the MCP endpoint, over real HTTP on loopback.

The faulty backends are a small probe app of these tests, because an
official-SDK server cannot be made to respond with the wrong id or to end a
stream early. Slow and partial uploads are sent over a raw TCP socket,
because HTTP clients always finish the body they declared.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import msgspec
import pytest
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    GatewayHarness,
    default_stages,
    initialize_body,
    running_backend,
    running_gateway,
)

from gateway.context import RequestContext
from gateway.events import BackendFailed, RequestRejected, SessionRejected
from gateway.mcp.response import GatewayResponse
from gateway.mcp.sse import SseParser
from gateway.runtime import Runtime
from gateway.stages.authenticate import AuthenticateConfig, AuthenticateStage
from pipeline import BaseStage, Next
from pipeline.stage import NoConfig

pytestmark = pytest.mark.anyio

PROBE_SESSION = "probe-session"
NOTIFICATION = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}


class ProbeBackend:
    """An MCP backend with a set reply to every request but initialize.

    ``initialize`` gets a JSON result and a session id, and notifications
    get 202. Other requests get ``reply``, one of ``other_id`` (a JSON
    response for id "other"), ``unanswered`` (an event stream with one
    notification and no response) and ``not_json`` (an event stream with an
    event that is not JSON).
    """

    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        message = json.loads(body)
        if message.get("method") == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {}}
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            await self._send(send, 200, "application/json", [json.dumps(reply)])
        elif "id" not in message:
            await self._send(send, 202, "application/json", [])
        elif self.reply == "other_id":
            reply = {"jsonrpc": "2.0", "id": "other", "result": {"content": []}}
            await self._send(send, 200, "application/json", [json.dumps(reply)])
        elif self.reply == "unanswered":
            event = f"data: {json.dumps(NOTIFICATION)}\n\n"
            await self._send(send, 200, "text/event-stream", [event])
        else:
            await self._send(send, 200, "text/event-stream", ["data: {not json\n\n"])

    async def _send(
        self, send: Any, status: int, content_type: str, chunks: list[str]
    ) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"mcp-session-id", PROBE_SESSION.encode()),
        ]
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        for chunk in chunks:
            await send(
                {
                    "type": "http.response.body",
                    "body": chunk.encode(),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.asynccontextmanager
async def probe_stack(
    reply: str,
) -> AsyncIterator[tuple[GatewayHarness, httpx.AsyncClient]]:
    from gateway.demo.serve import run_app

    async with (
        run_app(ProbeBackend(reply)) as backend,
        running_gateway(f"{backend.url}/mcp") as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        yield gateway, client


@contextlib.asynccontextmanager
async def sdk_stack(
    controls: BackendControls | None = None, **options: Any
) -> AsyncIterator[tuple[GatewayHarness, httpx.AsyncClient]]:
    async with (
        running_backend(controls or BackendControls()) as backend_url,
        running_gateway(backend_url, **options) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        yield gateway, client


async def open_session(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    """Initialize a session; return the headers of requests in it."""
    response = await client.post(url, json=initialize_body(), headers=MCP_HEADERS)
    assert response.status_code == 200
    headers = {
        **MCP_HEADERS,
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-06-18",
    }
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await client.post(url, json=initialized, headers=headers)).status_code
    return headers


def messages_of(response: httpx.Response) -> list[dict[str, Any]]:
    if response.headers["content-type"].startswith("text/event-stream"):
        parser = SseParser()
        return [json.loads(e.data) for e in parser.feed(response.content) if e.data]
    return [response.json()]


def tools_call(request_id: Any, name: str = "echo") -> dict[str, Any]:
    arguments = {"text": "x"} if name == "echo" else {"n": 2}
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def test_transport_faults_answer_to_other_id_replaced() -> None:
    """A JSON response for another id is replaced by one for the client's id."""
    async with probe_stack("other_id") as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        called = await client.post(gateway.mcp_url, json=tools_call(5), headers=headers)
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"},
            headers=headers,
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    [call_answer] = messages_of(called)
    assert call_answer["id"] == 5
    assert call_answer["result"]["isError"] is True
    [list_answer] = messages_of(listed)
    assert list_answer["id"] == 6
    assert list_answer["error"]["code"] == -32603
    assert list_answer["error"]["data"]["reason"] == "backend_invalid_response"
    assert [event.reason for event in failed] == ["backend_invalid_response"] * 2


@pytest.mark.parametrize("reply", ["unanswered", "not_json"])
async def test_transport_faults_unanswered_stream_gets_answer_event(
    reply: str,
) -> None:
    """A stream that ends without the response ends with the gateway's own."""
    async with probe_stack(reply) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
            headers=headers,
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    messages = messages_of(listed)
    assert listed.status_code == 200
    assert b"not json" not in listed.content
    if reply == "unanswered":
        assert messages[0] == NOTIFICATION
    answer = messages[-1]
    assert answer["id"] == 5
    assert answer["error"]["code"] == -32603
    assert answer["error"]["data"]["reason"] == "backend_invalid_response"
    assert len([m for m in messages if "id" in m]) == 1
    assert failed
    assert {event.reason for event in failed} == {"backend_invalid_response"}


async def test_transport_faults_deep_json_400_with_event() -> None:
    """Deeply nested JSON gets 400 -32700 and a RequestRejected event."""
    bodies = [b"[" * 5000] + [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"a":'
        + b"[" * depth
        + b"]" * depth
        + b"}}"
        for depth in (5000, 980, 300)
    ]
    async with probe_stack("other_id") as (gateway, client):
        responses = [
            await client.post(gateway.mcp_url, content=body, headers=MCP_HEADERS)
            for body in bodies
        ]
        await gateway.settle()
        rejected = gateway.events_of(RequestRejected)
    for response in responses:
        assert response.status_code == 400
        assert response.json()["id"] is None
        assert response.json()["error"]["code"] == -32700
        assert response.json()["error"]["data"]["reason"] == "parse_error"
    assert [event.status for event in rejected] == [400] * len(bodies)
    assert {event.reason for event in rejected} == {"parse_error"}


async def send_partial_post(
    mcp_url: str, declared_length: int, sent: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST over a raw socket, declare a length, send part of the body, stop.

    Returns the status, headers and body of the response, which must arrive
    while the rest of the body is still missing.
    """
    url = urlsplit(mcp_url)
    assert url.port is not None
    lines = [
        f"POST {url.path} HTTP/1.1",
        f"host: {url.netloc}",
        f"content-length: {declared_length}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    async with await anyio.connect_tcp("127.0.0.1", url.port) as stream:
        await stream.send(head + sent)
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive()
        head_part, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head_part.decode("latin-1").split("\r\n")
        response_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        length = int(response_headers["content-length"])
        while len(body) < length:
            body += await stream.receive()
    return int(status_line.split()[1]), response_headers, body


async def test_transport_faults_slow_body_408() -> None:
    """A body that stops arriving gets 408 after server.body_timeout."""
    async with probe_stack("other_id") as (gateway, _client):
        runtime = gateway.runtime
        server = msgspec.structs.replace(runtime.config.server, body_timeout=0.3)
        runtime.config = msgspec.structs.replace(runtime.config, server=server)
        headers = {**MCP_HEADERS, "authorization": "Bearer not-checked-here"}
        with anyio.fail_after(3):
            status, _headers, body = await send_partial_post(
                gateway.mcp_url, 100, b"{", headers
            )
        await gateway.settle()
        rejected = gateway.events_of(RequestRejected)
    error = json.loads(body)
    assert status == 408
    assert error["id"] is None
    assert error["error"]["data"]["reason"] == "body_timeout"
    assert "0.3 seconds" in error["error"]["message"]
    assert [(event.status, event.reason) for event in rejected] == [
        (408, "body_timeout")
    ]


def authenticating_stages(runtime: Runtime) -> list[Any]:
    authenticate = AuthenticateStage(
        name="authenticate", config=AuthenticateConfig(), resources=runtime
    )
    return [authenticate, *default_stages(runtime)]


async def test_transport_faults_anonymous_large_body_401_unread() -> None:
    """Without Authorization, a large declared body gets 401 before it is read."""
    async with running_gateway(
        "http://127.0.0.1:9/mcp",
        max_body_bytes=8 * 1024 * 1024,
        chain_factory=authenticating_stages,
    ) as gateway:
        with anyio.fail_after(3):
            status, headers, body = await send_partial_post(
                gateway.mcp_url, 4_000_000, b"{", MCP_HEADERS
            )
        await gateway.settle()
        rejected = gateway.events_of(RequestRejected)
    error = json.loads(body)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer resource_metadata=")
    assert (
        "/.well-known/oauth-protected-resource/employees/mcp"
        in (headers["www-authenticate"])
    )
    assert "error=" not in headers["www-authenticate"]
    assert error["error"]["code"] == -32001
    assert error["error"]["data"]["reason"] == "missing_token"
    assert [(event.status, event.outcome) for event in rejected] == [(401, "denied")]


async def test_transport_faults_anonymous_streamed_body_cut_at_bound() -> None:
    """Without Authorization, a body without length gets 401 after 64 KiB."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    async with (
        running_gateway(
            "http://127.0.0.1:9/mcp",
            max_body_bytes=8 * 1024 * 1024,
            chain_factory=authenticating_stages,
        ) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        response = await client.post(
            gateway.mcp_url, content=chunks(), headers=MCP_HEADERS
        )
    assert response.status_code == 401
    assert response.json()["error"]["data"]["reason"] == "missing_token"


async def test_transport_faults_anonymous_small_body_401_with_id() -> None:
    """Without Authorization, a small body is parsed and the 401 carries its id."""
    async with (
        running_gateway(
            "http://127.0.0.1:9/mcp", chain_factory=authenticating_stages
        ) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        response = await client.post(
            gateway.mcp_url, json=initialize_body("init-1"), headers=MCP_HEADERS
        )
    assert response.status_code == 401
    assert response.json()["id"] == "init-1"
    assert "resource_metadata=" in response.headers["www-authenticate"]


async def test_transport_faults_id_in_flight_reused_400() -> None:
    """A second request with an id still in flight in the session gets 400."""
    controls = BackendControls()
    async with sdk_stack(controls) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        gated = tools_call(5, "gated_count")
        gated["params"]["_meta"] = {"progressToken": "p5"}
        async with client.stream(
            "POST", gateway.mcp_url, json=gated, headers=headers
        ) as first:
            chunks = first.aiter_raw()
            with anyio.fail_after(3):
                await chunks.__anext__()
            reused = await client.post(
                gateway.mcp_url, json=tools_call(5), headers=headers
            )
            same_as_text = await client.post(
                gateway.mcp_url, json=tools_call("5"), headers=headers
            )
            other_id = await client.post(
                gateway.mcp_url, json=tools_call(6), headers=headers
            )
            controls.release.set()
            rest = b"".join([chunk async for chunk in chunks])
        again = await client.post(gateway.mcp_url, json=tools_call(5), headers=headers)
        await gateway.settle()
        rejected = gateway.events_of(SessionRejected)
    assert reused.status_code == 400
    assert reused.json()["id"] == 5
    assert reused.json()["error"]["code"] == -32600
    assert reused.json()["error"]["data"]["reason"] == "request_id_in_use"
    assert same_as_text.status_code == 400
    assert same_as_text.json()["id"] == "5"
    assert other_id.status_code == 200
    assert messages_of(other_id)[-1]["id"] == 6
    assert b'"id":5' in rest
    assert again.status_code == 200
    assert messages_of(again)[-1]["id"] == 5
    assert [(event.status, event.reason) for event in rejected] == [
        (400, "request_id_in_use")
    ] * 2


async def test_transport_faults_406_message_matches_rule() -> None:
    """The 406 message states that either media type is enough."""
    async with sdk_stack() as (gateway, client):
        response = await client.post(
            gateway.mcp_url,
            json=initialize_body(),
            headers={**MCP_HEADERS, "accept": "text/html"},
        )
    assert response.status_code == 406
    message = response.json()["error"]["message"]
    assert "application/json or text/event-stream" in message


class NotificationBug(BaseStage[RequestContext, GatewayResponse]):
    """Raises on notifications, as a stage with a bug would."""

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        if ctx.message is not None and ctx.message.kind == "notification":
            raise RuntimeError("a bug in a stage")
        return await call_next(ctx)


def buggy_stages(runtime: Runtime) -> list[Any]:
    bug = NotificationBug(name="bug", config=NoConfig(), resources=runtime)
    return [bug, *default_stages(runtime)]


async def test_transport_faults_notification_chain_exception_not_2xx() -> None:
    """A notification the chain failed on gets an HTTP error, not 200 or 202."""
    async with sdk_stack(chain_factory=buggy_stages) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url, json=NOTIFICATION, headers=headers
        )
    assert response.status_code == 500
    assert response.json()["id"] is None
    assert response.json()["error"]["data"]["reason"] == "internal_error"
