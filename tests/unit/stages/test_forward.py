"""The forward stage against a scripted backend on loopback.

See :mod:`data_path_support` for why these cases use a scripted backend; the
integration tests cover the same stage against an official-SDK server.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate

from gateway.context import RequestContext
from gateway.events import BackendFailed
from gateway.facts import BACKEND_SESSION, BackendSession
from gateway.mcp.backend import UpstreamStreamError
from gateway.mcp.response import GatewayResponse
from gateway.mcp.sse import SseParser
from gateway.stages.forward import (
    BACKEND_CHALLENGE,
    BACKEND_SESSION_ID,
    BACKEND_STATUS,
    ForwardStage,
)
from pipeline.stage import NoConfig

from .data_path_support import (
    API_KEY,
    DataPath,
    ScriptedBackend,
    body_of,
    data_path,
    json_reply,
    make_context,
    slow_reply,
    sse_reply,
)

TOOLS_LIST = {"jsonrpc": "2.0", "id": 13, "method": "tools/list"}
TOOLS_CALL = {
    "jsonrpc": "2.0",
    "id": 9,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "hi"}},
}
RESOURCES_READ = {
    "jsonrpc": "2.0",
    "id": 10,
    "method": "resources/read",
    "params": {"uri": "file:///x"},
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
RESULT_13 = {"jsonrpc": "2.0", "id": 13, "result": {"tools": []}}


def messages_in(stream_body: bytes) -> list[dict[str, Any]]:
    """Return the JSON-RPC messages of an event stream body."""
    parser = SseParser()
    return [json.loads(e.data) for e in parser.feed(stream_body) if e.data]


async def read_stream(response: GatewayResponse) -> tuple[bytes, str | None]:
    """Read a response stream to its end; return its bytes and the error raised."""
    assert response.stream is not None
    chunks: list[bytes] = []
    try:
        async for chunk in response.stream:
            chunks.append(chunk)
    except UpstreamStreamError as exc:
        return b"".join(chunks), str(exc)
    return b"".join(chunks), None


async def forward(ctx: RequestContext) -> GatewayResponse:
    async def no_next(_ctx: RequestContext) -> GatewayResponse:
        raise AssertionError("the forward stage must not call the next stage")

    stage = ForwardStage(name="forward", config=NoConfig(), resources=ctx.runtime)
    return await stage.handle(ctx, no_next)


def failures(path: DataPath) -> list[BackendFailed]:
    return [event for event in path.events if isinstance(event, BackendFailed)]


@pytest.mark.anyio
async def test_forward_post_headers_built_from_scratch() -> None:
    """Only MCP headers, the credential and the backend session id go upstream."""
    backend = ScriptedBackend(replies=[json_reply(200, RESULT_13)])
    raw = b'{"jsonrpc":"2.0",  "id":13, "method":"tools/list"}'

    async with data_path(backend) as path:
        ctx = make_context(
            path.runtime,
            message=raw,
            headers={
                "authorization": "Bearer user-token",
                "cookie": "session=abc",
                "mcp-session-id": "gateway-session",
                "host": "gateway.test",
                "connection": "keep-alive, x-secret",
                "x-secret": "1",
                "mcp-protocol-version": "2025-06-18",
                "traceparent": TRACEPARENT,
            },
        )
        ctx.provide(
            BACKEND_SESSION,
            BackendSession(
                gateway_session_id="gateway-session", backend_session_id="b-1"
            ),
        )
        # The endpoint runs the chain under the client's trace context; doing
        # the same keeps the result independent of any tracer provider that
        # an earlier test installed globally.
        token = otel_context.attach(propagate.extract({"traceparent": TRACEPARENT}))
        try:
            response = await forward(ctx)
        finally:
            otel_context.detach(token)

    sent = backend.received[0]
    sent_message = json.loads(sent.body)
    # The trace context also travels in params._meta, the MCP carrier.
    trace_meta = sent_message.pop("params")["_meta"]
    assert sent_message == json.loads(raw)
    assert trace_meta["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["mcp-session-id"] == "b-1"
    assert sent.headers["mcp-protocol-version"] == "2025-06-18"
    assert sent.headers["accept"] == "application/json, text/event-stream"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert "cookie" not in sent.headers
    assert "x-secret" not in sent.headers
    assert sent.headers["host"] != "gateway.test"
    assert sent.headers["traceparent"].startswith(
        "00-0af7651916cd43dd8448eb211c80319c-"
    )
    assert response.status == 200
    assert json.loads(response.body) == RESULT_13


@pytest.mark.anyio
async def test_forward_initialize_sends_no_session_header() -> None:
    """Without a backend session id, no Mcp-Session-Id goes upstream."""
    backend = ScriptedBackend(replies=[json_reply(200, RESULT_13)])
    async with data_path(backend) as path:
        ctx = make_context(
            path.runtime, message=TOOLS_LIST, headers={"mcp-session-id": "gw"}
        )
        ctx.provide(
            BACKEND_SESSION,
            BackendSession(gateway_session_id=None, backend_session_id=None),
        )
        await forward(ctx)
    assert "mcp-session-id" not in backend.received[0].headers


@pytest.mark.anyio
async def test_forward_response_headers_allow_listed() -> None:
    """Set-Cookie, CORS, HSTS, Location, Server, session id and version stay behind."""
    hostile = {
        "set-cookie": "x=1",
        "access-control-allow-origin": "*",
        "strict-transport-security": "max-age=1",
        "location": "http://elsewhere.test/",
        "server": "backend",
        "mcp-session-id": "b-secret",
        "mcp-protocol-version": "2025-06-18",
    }
    backend = ScriptedBackend(replies=[json_reply(200, RESULT_13, hostile)])
    async with data_path(backend) as path:
        ctx = make_context(path.runtime, message=TOOLS_LIST)
        response = await forward(ctx)
    # The backend's protocol version is the backend hop's, not the client's.
    assert response.headers == {"content-type": "application/json"}
    assert ctx.attributes[BACKEND_SESSION_ID] == "b-secret"
    assert ctx.attributes[BACKEND_STATUS] == 200


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 202, 204])
async def test_forward_notification_accepted_gets_202(status: int) -> None:
    """A notification the backend accepts with any 2xx gets 202 with no body."""
    reply = json_reply(status, b"") if status != 200 else json_reply(200, b"{}")
    backend = ScriptedBackend(replies=[reply])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=INITIALIZED))
    assert response.status == 202
    assert response.body == b""
    assert response.stream is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "application/json", b'{"Output":"x","Version":"1"}'),
        (200, "text/html", b"<html>ok</html>"),
        (202, "application/json", b""),
    ],
)
async def test_forward_unusable_2xx_body_synthesizes_error(
    status: int, content_type: str, body: bytes
) -> None:
    """A 2xx that is not one JSON-RPC response becomes -32603 for the request id."""
    backend = ScriptedBackend(
        replies=[json_reply(status, body, {"content-type": content_type})]
    )
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_LIST))
        events = await path.settle()
    message = json.loads(response.body)
    assert response.status == 200
    assert message["id"] == 13
    assert message["error"]["code"] == -32603
    assert message["error"]["data"]["reason"] == "backend_invalid_response"
    assert "Output" not in response.body.decode()
    assert [e.reason for e in events if isinstance(e, BackendFailed)] == [
        "backend_invalid_response"
    ]


@pytest.mark.anyio
async def test_forward_backend_5xx_tool_call_is_error_result() -> None:
    """A backend 502 page for tools/call becomes an isError result in HTTP 200."""
    page = json_reply(
        502, b"<html>bad gateway at b1.internal</html>", {"content-type": "text/html"}
    )
    backend = ScriptedBackend(replies=[page])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        await path.settle()
        failed = failures(path)
    message = json.loads(response.body)
    assert response.status == 200
    assert message["id"] == 9
    assert message["result"]["isError"] is True
    assert message["result"]["content"][0]["text"] == "backend employees unavailable"
    assert response.reason == "backend_unavailable"
    assert "internal" not in response.body.decode()
    assert [event.detail for event in failed] == ["HTTP 502"]


@pytest.mark.anyio
async def test_forward_connection_refused_jsonrpc_error() -> None:
    """An unreachable backend gives resources/read a JSON-RPC error in HTTP 200."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with data_path(url=f"http://127.0.0.1:{port}/mcp") as path:
        ctx = make_context(path.runtime, message=RESOURCES_READ)
        response = await forward(ctx)
        notification = await forward(make_context(path.runtime, message=INITIALIZED))
        await path.settle()
        failed = failures(path)
    message = json.loads(response.body)
    assert response.status == 200
    assert message["id"] == 10
    assert message["error"]["code"] == -32603
    assert message["error"]["message"] == "backend employees unavailable"
    assert message["error"]["data"]["reason"] == "backend_unavailable"
    assert str(port) not in response.body.decode()
    assert BACKEND_STATUS not in ctx.attributes
    assert notification.status == 502
    assert [event.reason for event in failed] == ["backend_unavailable"] * 2


@pytest.mark.anyio
async def test_forward_slow_backend_times_out() -> None:
    """Headers later than the backend timeout give reason backend_timeout."""
    backend = ScriptedBackend(replies=[slow_reply(0.5)])
    async with data_path(backend, timeout=0.2) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_LIST))
    message = json.loads(response.body)
    assert message["id"] == 13
    assert message["error"]["data"]["reason"] == "backend_timeout"


@pytest.mark.anyio
async def test_forward_backend_401_recorded_not_relayed() -> None:
    """A backend 401 is recorded for the exchange stage; its challenge stays inside."""
    challenge = 'Bearer resource_metadata="http://b1.internal/.well-known/x"'
    backend = ScriptedBackend(
        replies=[json_reply(401, b"", {"www-authenticate": challenge})]
    )
    async with data_path(backend) as path:
        ctx = make_context(path.runtime, message=TOOLS_LIST)
        response = await forward(ctx)
    assert ctx.attributes[BACKEND_STATUS] == 401
    assert ctx.attributes[BACKEND_CHALLENGE] == challenge
    assert response.status == 200
    assert "www-authenticate" not in response.headers
    assert (
        json.loads(response.body)["error"]["data"]["reason"] == "backend_unauthorized"
    )


@pytest.mark.anyio
async def test_forward_backend_jsonrpc_error_relayed_with_client_id() -> None:
    """A backend 400 carrying a JSON-RPC error reaches the client as that error."""
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32602, "message": "bad"}}
    backend = ScriptedBackend(replies=[json_reply(400, error)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_LIST))
    assert response.status == 200
    assert json.loads(response.body) == {**error, "id": 13}


@pytest.mark.anyio
async def test_forward_backend_429_retry_after_in_data() -> None:
    """A backend 429 gives reason backend_rate_limited with data.retry_after."""
    backend = ScriptedBackend(replies=[json_reply(429, b"", {"retry-after": "7"})])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_LIST))
    data = json.loads(response.body)["error"]["data"]
    assert data["reason"] == "backend_rate_limited"
    assert data["retry_after"] == 7


@pytest.mark.anyio
async def test_forward_sse_relayed_before_backend_finishes() -> None:
    """The first event reaches the gateway before the backend sends the rest."""
    gate = anyio.Event()
    progress = (
        b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
    )
    result = b'data: {"jsonrpc":"2.0","id":9,"result":{"content":[]}}\n\n'
    backend = ScriptedBackend(
        replies=[
            sse_reply([progress, result], gate=gate, headers={"set-cookie": "x=1"})
        ]
    )
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        assert response.stream is not None
        iterator = response.stream.__aiter__()
        with anyio.fail_after(2):
            first = await iterator.__anext__()
        gate.set()
        rest = b"".join([chunk async for chunk in iterator])
    assert first == progress
    assert rest == result
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "set-cookie" not in response.headers


@pytest.mark.anyio
async def test_forward_sse_reset_mid_stream_answers_and_raises() -> None:
    """A stream cut before the response ends with the gateway's response, then fails."""
    event = b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
    backend = ScriptedBackend(replies=[sse_reply([event], fail_after=True)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        received: list[bytes] = []
        with pytest.raises(UpstreamStreamError):
            assert response.stream is not None
            async for chunk in response.stream:
                received.append(chunk)
        await path.settle()
        failed = failures(path)
    assert received[0] == event
    [answer] = messages_in(b"".join(received[1:]))
    assert answer["id"] == 9
    assert answer["result"]["isError"] is True
    assert answer["result"]["content"][0]["text"] == (
        "backend employees failed while sending its response"
    )
    assert [event.reason for event in failed] == ["backend_stream_failed"]


@pytest.mark.anyio
async def test_forward_stream_closed_unread_releases_upstream() -> None:
    """Running on_close on a stream never read closes the upstream response."""
    gate = anyio.Event()
    backend = ScriptedBackend(
        replies=[sse_reply([b"data: 1\n\n", b"data: 2\n\n"], gate=gate)]
    )
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        for callback in response.on_close:
            await callback(None)  # type: ignore[arg-type]
        assert response.stream is not None
        assert [chunk async for chunk in response.stream] == []
        gate.set()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "expected_status"),
    [
        (json_reply(405, b"", {"allow": "POST, DELETE"}), 405),
        (json_reply(200, b"<html></html>", {"content-type": "text/html"}), 405),
        (json_reply(503, b""), 502),
    ],
)
async def test_forward_get_without_stream_answers_405(
    reply: Any, expected_status: int
) -> None:
    """A backend that offers no GET stream gives 405 with Allow; an outage 502."""
    backend = ScriptedBackend(replies=[reply])
    async with data_path(backend) as path:
        response = await forward(
            make_context(
                path.runtime, method="GET", headers={"accept": "text/event-stream"}
            )
        )
    assert response.status == expected_status
    if expected_status == 405:
        assert response.headers["allow"] == "POST, DELETE"
    assert backend.received[0].headers["accept"] == "text/event-stream"


@pytest.mark.anyio
async def test_forward_get_stream_relayed() -> None:
    """A backend GET event stream is relayed as a stream."""
    backend = ScriptedBackend(replies=[sse_reply([b": open\n\n"])])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, method="GET"))
        body = await body_of(response)
    assert response.status == 200
    assert body == b": open\n\n"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 204, 404, 405])
async def test_forward_delete_tolerates_404_and_405(status: int) -> None:
    """A backend DELETE status of 2xx, 404 or 405 becomes 204 at the gateway."""
    backend = ScriptedBackend(replies=[json_reply(status, b"")])
    async with data_path(backend) as path:
        ctx = make_context(path.runtime, method="DELETE")
        ctx.provide(
            BACKEND_SESSION,
            BackendSession(gateway_session_id="g", backend_session_id="b"),
        )
        response = await forward(ctx)
    assert response.status == 204
    assert backend.received[0].method == "DELETE"
    assert backend.received[0].headers["mcp-session-id"] == "b"


PROGRESS = b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'


@pytest.mark.anyio
@pytest.mark.parametrize("message", [TOOLS_LIST, TOOLS_CALL], ids=["list", "call"])
async def test_forward_json_answer_to_other_id_is_invalid(
    message: dict[str, Any],
) -> None:
    """A JSON response for another id never reaches the client as its response."""
    other = {"jsonrpc": "2.0", "id": "other", "result": {"tools": []}}
    backend = ScriptedBackend(replies=[json_reply(200, other)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=message))
        await path.settle()
        failed = failures(path)
    answer = json.loads(response.body)
    assert response.status == 200
    assert answer["id"] == message["id"]
    assert response.reason == "backend_invalid_response"
    if message["method"] == "tools/call":
        assert answer["result"]["isError"] is True
    else:
        assert answer["error"]["code"] == -32603
        assert answer["error"]["data"]["reason"] == "backend_invalid_response"
    assert [event.reason for event in failed] == ["backend_invalid_response"]
    assert "another request id" in failed[0].detail


@pytest.mark.anyio
async def test_forward_json_answer_id_of_other_type_is_invalid() -> None:
    """The response to id 13 must carry 13, not "13"."""
    other = {"jsonrpc": "2.0", "id": "13", "result": {"tools": []}}
    backend = ScriptedBackend(replies=[json_reply(200, other)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_LIST))
    assert json.loads(response.body)["id"] == 13
    assert response.reason == "backend_invalid_response"


@pytest.mark.anyio
async def test_forward_deeply_nested_json_answer_is_invalid() -> None:
    """A result nested past the parser's depth becomes a gateway error, not a crash."""
    deep = b'{"jsonrpc":"2.0","id":13,"result":' + b"[" * 5000 + b"]" * 5000 + b"}"
    backend = ScriptedBackend(replies=[json_reply(200, deep)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_LIST))
    answer = json.loads(response.body)
    assert answer["id"] == 13
    assert answer["error"]["data"]["reason"] == "backend_invalid_response"


@pytest.mark.anyio
async def test_forward_sse_ended_unanswered_appends_answer() -> None:
    """A stream that ends after a notification gets one answer for the id appended."""
    backend = ScriptedBackend(replies=[sse_reply([PROGRESS])])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_LIST))
        body, error = await read_stream(response)
        await path.settle()
        failed = failures(path)
    progress, answer = messages_in(body)
    assert body.startswith(PROGRESS)
    assert progress["method"] == "notifications/progress"
    assert answer["id"] == 13
    assert answer["error"]["code"] == -32603
    assert answer["error"]["data"]["reason"] == "backend_invalid_response"
    assert error == "the event stream ended without the response"
    assert [event.reason for event in failed] == ["backend_invalid_response"]


@pytest.mark.anyio
async def test_forward_sse_invalid_event_dropped_then_answered() -> None:
    """An event that is not JSON is dropped and reported; the client gets an answer."""
    events = [b"data: {not json\n\n", b'data: {"jsonrpc":"1.0"}\n\n']
    backend = ScriptedBackend(replies=[sse_reply(events)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        body, error = await read_stream(response)
        await path.settle()
        failed = failures(path)
    [answer] = messages_in(body)
    assert b"not json" not in body
    assert answer["id"] == 9
    assert answer["result"]["isError"] is True
    assert error is not None
    assert [event.reason for event in failed] == ["backend_invalid_response"] * 2
    assert failed[0].detail == (
        "dropped an event whose data is not valid JSON from the event stream"
    )


@pytest.mark.anyio
async def test_forward_sse_answer_to_other_id_dropped() -> None:
    """A response to another id is dropped and the stream waits for its own."""
    events = [
        b'data: {"jsonrpc":"2.0","id":"other","result":{}}\n\n',
        b'data: {"jsonrpc":"2.0","id":9,"result":{"content":[]}}\n\n',
        PROGRESS,
    ]
    backend = ScriptedBackend(replies=[sse_reply(events)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        body, error = await read_stream(response)
    assert body == events[1]
    assert error is None


@pytest.mark.anyio
async def test_forward_sse_resumable_stream_closed_early_not_answered() -> None:
    """A stream that sent an event id may close early; the client resumes it."""
    priming = b"id: ev-1\nretry: 100\ndata: \n\n"
    backend = ScriptedBackend(replies=[sse_reply([priming])])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        body, error = await read_stream(response)
        await path.settle()
        failed = failures(path)
    assert messages_in(body) == []
    assert b"id: ev-1" in body
    assert error is None
    assert failed == []


@pytest.mark.anyio
async def test_forward_sse_comment_and_crlf_events_relayed() -> None:
    """Comments and CRLF-delimited events pass, as complete events."""
    events = [
        b": keep-alive\r\n\r\nevent: message\r\ndata: ",
        b'{"jsonrpc":"2.0","id":9,"result":{}}\r\n\r\n',
    ]
    backend = ScriptedBackend(replies=[sse_reply(events)])
    async with data_path(backend) as path:
        response = await forward(make_context(path.runtime, message=TOOLS_CALL))
        body, error = await read_stream(response)
    assert body == (
        b": keep-alive\n\n"
        b'event: message\ndata: {"jsonrpc":"2.0","id":9,"result":{}}\n\n'
    )
    assert error is None


@pytest.mark.anyio
async def test_forward_duplicate_keys_backend_gets_checked_message() -> None:
    """A body that repeats a key reaches the backend as the message stages saw."""
    raw = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"allowed_tool","name":"denied_tool"},'
        b'"method":"tools/call"}'
    )
    reply = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}
    backend = ScriptedBackend(replies=[json_reply(200, reply)])
    async with data_path(backend) as path:
        ctx = make_context(path.runtime, message=raw)
        await forward(ctx)
    sent = backend.received[0].body
    assert ctx.tool == "denied_tool"
    assert sent.count(b'"name"') == 1
    assert sent.count(b'"method"') == 1
    assert json.loads(sent)["params"] == {"name": "denied_tool"}
