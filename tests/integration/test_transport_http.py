"""Edge cases of the MCP endpoint over raw HTTP, with an SDK backend behind it.

The chain is a stand-in security stage, then ``session`` and ``forward``
(see :mod:`_transport_harness`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import httpx
import pytest
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    GatewayHarness,
    StandInSecurityStage,
    default_stages,
    initialize_body,
    running_backend,
    running_gateway,
)

from gateway.context import RequestContext
from gateway.events import RequestRejected
from gateway.mcp.response import GatewayResponse, StreamOutcome
from gateway.mcp.sse import SseParser
from gateway.runtime import Runtime
from gateway.stages.forward import ForwardStage
from gateway.stages.session import SessionStage
from pipeline import BaseStage, Next
from pipeline.stage import NoConfig

INSPECTOR = "http://localhost:6274"
CONFIGURED_ORIGIN = "https://inspector.example.test"


@contextlib.asynccontextmanager
async def stack(
    controls: BackendControls | None = None, **gateway_options: Any
) -> AsyncIterator[tuple[GatewayHarness, httpx.AsyncClient]]:
    controls = controls or BackendControls()
    gateway_options.setdefault("allowed_origins", [CONFIGURED_ORIGIN])
    async with (
        running_backend(controls) as backend_url,
        running_gateway(backend_url, **gateway_options) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        yield gateway, client


def messages_of(response: httpx.Response) -> list[dict[str, Any]]:
    """Return the JSON-RPC messages of a JSON or event-stream body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        parser = SseParser()
        return [json.loads(e.data) for e in parser.feed(response.content) if e.data]
    return [json.loads(response.content)]


async def initialize(client: httpx.AsyncClient, url: str, **headers: str) -> str:
    response = await client.post(
        url, json=initialize_body(), headers={**MCP_HEADERS, **headers}
    )
    assert response.status_code == 200
    await client.post(
        url,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers=session_headers(response.headers["mcp-session-id"], **headers),
    )
    return str(response.headers["mcp-session-id"])


def session_headers(session_id: str, **extra: str) -> dict[str, str]:
    return {
        **MCP_HEADERS,
        "mcp-session-id": session_id,
        "mcp-protocol-version": "2025-06-18",
        **extra,
    }


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    return dict(body["error"])


@pytest.mark.anyio
async def test_transport_http_malformed_bodies_400() -> None:
    """Bodies that are not one JSON-RPC message get 400 with the right code and id."""
    cases: list[tuple[bytes, int, Any]] = [
        (b'{"jsonrpc":"2.0","id":4,"method":"tools/list"', -32700, None),
        (b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]', -32600, None),
        (b"[]", -32600, None),
        (b"null", -32600, None),
        (b'"hello"', -32600, None),
        (b"42", -32600, None),
        (b'{"jsonrpc":"2.0","id":3}', -32600, 3),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"1.0","id":"a","method":"ping"}', -32600, "a"),
    ]
    async with stack() as (gateway, client):
        for body, code, expected_id in cases:
            response = await client.post(
                gateway.mcp_url, content=body, headers=MCP_HEADERS
            )
            assert response.status_code == 400, body
            assert response.json()["id"] == expected_id, body
            assert error_of(response)["code"] == code, body
            assert response.headers["x-request-id"]
        await gateway.settle()
        rejected = gateway.events_of(RequestRejected)
    assert len(rejected) == len(cases)
    assert {event.status for event in rejected} == {400}


@pytest.mark.anyio
async def test_transport_http_ids_echoed_with_exact_type() -> None:
    """Ids come back with the same JSON type and value, big integers included."""
    ids: list[Any] = [0, "0", 1, "1", 9007199254740993, "req-é-🙂"]
    async with stack() as (gateway, client):
        session_id = await initialize(client, gateway.mcp_url)
        for request_id in ids:
            response = await client.post(
                gateway.mcp_url,
                content=json.dumps(
                    {"jsonrpc": "2.0", "id": request_id, "method": "ping"}
                ),
                headers=session_headers(session_id),
            )
            [message] = messages_of(response)
            assert message["id"] == request_id
            assert type(message["id"]) is type(request_id)


@pytest.mark.anyio
async def test_transport_http_notification_and_response_202() -> None:
    """An accepted notification or client response gets 202 with no body."""
    async with stack() as (gateway, client):
        session_id = await initialize(client, gateway.mcp_url)
        for message in (
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 99},
            },
            {"jsonrpc": "2.0", "id": "srv-9", "result": {}},
        ):
            response = await client.post(
                gateway.mcp_url, json=message, headers=session_headers(session_id)
            )
            assert response.status_code == 202, message
            assert response.content == b""
            assert response.headers["x-request-id"]


@pytest.mark.anyio
async def test_transport_http_session_errors_400_and_404() -> None:
    """A missing session gets 400; unknown, foreign and deleted sessions get 404."""
    tools_list = {"jsonrpc": "2.0", "id": 23, "method": "tools/list"}
    async with stack() as (gateway, client):
        url = gateway.mcp_url
        session_id = await initialize(client, url)
        missing = await client.post(url, json=tools_list, headers=MCP_HEADERS)
        unknown = await client.post(
            url, json=tools_list, headers=session_headers("gw-expired")
        )
        foreign = await client.post(
            url,
            json=tools_list,
            headers=session_headers(session_id, **{"x-test-user": "bob"}),
        )
        mine = await client.post(
            url, json=tools_list, headers=session_headers(session_id)
        )
        deleted = await client.delete(url, headers=session_headers(session_id))
        after = await client.post(
            url, json=tools_list, headers=session_headers(session_id)
        )
        deleted_again = await client.delete(url, headers=session_headers(session_id))

    assert missing.status_code == 400
    assert missing.json()["id"] == 23
    assert error_of(missing)["data"]["reason"] == "missing_session"
    assert unknown.status_code == 404
    assert error_of(unknown)["data"]["reason"] == "unknown_session"
    assert foreign.status_code == 404
    assert foreign.content == unknown.content
    assert mine.status_code == 200
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert after.status_code == 404
    assert deleted_again.status_code == 404


@pytest.mark.anyio
async def test_transport_http_trailing_slash_path_served() -> None:
    """The backend path with a trailing slash is the same endpoint."""
    async with stack() as (gateway, client):
        response = await client.post(
            gateway.mcp_url + "/", json=initialize_body(), headers=MCP_HEADERS
        )
    assert response.status_code == 200
    assert "mcp-session-id" in response.headers


@pytest.mark.anyio
async def test_transport_http_sse_relayed_event_by_event() -> None:
    """The first progress event arrives while the tool still waits for release."""
    controls = BackendControls()
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "gated_count",
            "arguments": {"n": 2},
            "_meta": {"progressToken": "p7"},
        },
    }
    parser = SseParser()
    messages: list[dict[str, Any]] = []
    received_before_release: int | None = None

    async with stack(controls) as (gateway, client):
        session_id = await initialize(client, gateway.mcp_url)
        async with client.stream(
            "POST", gateway.mcp_url, json=call, headers=session_headers(session_id)
        ) as response:
            headers = response.headers
            with anyio.fail_after(2):
                async for chunk in response.aiter_raw():
                    for event in parser.feed(chunk):
                        if event.data:
                            messages.append(json.loads(event.data))
                    if messages and received_before_release is None:
                        received_before_release = len(messages)
                        controls.release.set()

    assert received_before_release == 1
    assert messages[0]["method"] == "notifications/progress"
    assert messages[0]["params"]["progressToken"] == "p7"
    assert messages[-1]["id"] == 7
    assert "released" in messages[-1]["result"]["content"][0]["text"]
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-length" not in headers
    assert "content-encoding" not in headers


@pytest.mark.anyio
async def test_transport_http_foreign_origin_403() -> None:
    """A foreign Origin gets 403 without CORS headers, before anything else."""
    async with stack() as (gateway, client):
        for method in ("POST", "OPTIONS"):
            response = await client.request(
                method,
                gateway.mcp_url,
                json=initialize_body(),
                headers={**MCP_HEADERS, "origin": "https://evil.example.test"},
            )
            assert response.status_code == 403
            assert error_of(response)["data"]["reason"] == "forbidden_origin"
            assert "access-control-allow-origin" not in response.headers
        await gateway.settle()
        rejected = gateway.events_of(RequestRejected)
    assert [event.outcome for event in rejected] == ["denied", "denied"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.test@localhost:6274",
        "http://localhost:6274/path",
        "http://localhost:6274#x",
        "null",
    ],
)
async def test_malformed_loopback_lookalike_origin_403(origin: str) -> None:
    """An Origin with user info, a path or a fragment is not loopback: 403."""
    async with stack() as (gateway, client):
        response = await client.post(
            gateway.mcp_url,
            json=initialize_body(),
            headers={**MCP_HEADERS, "origin": origin},
        )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.anyio
async def test_transport_http_preflight_answered_without_auth() -> None:
    """A preflight from an allowed origin gets 204 with the MCP CORS headers."""
    async with stack() as (gateway, client):
        response = await client.options(
            gateway.mcp_url,
            headers={
                "origin": INSPECTOR,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, mcp-session-id",
            },
        )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == INSPECTOR
    assert (
        response.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    )
    allowed = response.headers["access-control-allow-headers"]
    for name in (
        "authorization",
        "mcp-protocol-version",
        "mcp-session-id",
        "last-event-id",
    ):
        assert name in allowed
    assert response.headers["access-control-max-age"]
    assert response.headers["vary"] == "Origin"


@pytest.mark.anyio
async def test_preflight_allows_stateless_routing_and_param_headers() -> None:
    """A 2026-07-28 browser client may send Mcp-Method, Mcp-Name and Mcp-Param-*."""
    requested = "mcp-method, mcp-name, Mcp-Param-Region, mcp-param-bad header, x-other"
    async with stack() as (gateway, client):
        response = await client.options(
            gateway.mcp_url,
            headers={
                "origin": INSPECTOR,
                "access-control-request-method": "POST",
                "access-control-request-headers": requested,
            },
        )
    allowed = [
        name.strip()
        for name in response.headers["access-control-allow-headers"].split(",")
    ]
    assert response.status_code == 204
    assert "mcp-method" in allowed
    assert "mcp-name" in allowed
    assert "mcp-param-region" in allowed
    assert "mcp-param-bad header" not in allowed
    assert "x-other" not in allowed


@pytest.mark.anyio
async def test_transport_http_cors_on_every_real_response() -> None:
    """Allowed origins get Allow-Origin and Expose-Headers, errors included."""
    async with stack() as (gateway, client):
        ok = await client.post(
            gateway.mcp_url,
            json=initialize_body(),
            headers={**MCP_HEADERS, "origin": CONFIGURED_ORIGIN},
        )
        missing = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={**MCP_HEADERS, "origin": INSPECTOR},
        )
        malformed = await client.post(
            gateway.mcp_url, content=b"{", headers={**MCP_HEADERS, "origin": INSPECTOR}
        )
    for response, origin in (
        (ok, CONFIGURED_ORIGIN),
        (missing, INSPECTOR),
        (malformed, INSPECTOR),
    ):
        assert response.headers["access-control-allow-origin"] == origin
        exposed = response.headers["access-control-expose-headers"]
        assert "Mcp-Session-Id" in exposed
        assert "WWW-Authenticate" in exposed
    assert missing.status_code == 400
    assert malformed.status_code == 400


@pytest.mark.anyio
async def test_transport_http_body_limit_413() -> None:
    """Bodies over the limit get 413, declared or streamed without a length."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 1024

    async with stack(max_body_bytes=8 * 1024) as (gateway, client):
        declared = await client.post(
            gateway.mcp_url, content=b" " * (9 * 1024), headers=MCP_HEADERS
        )
        streamed = await client.post(
            gateway.mcp_url, content=chunks(), headers=MCP_HEADERS
        )
    for response in (declared, streamed):
        assert response.status_code == 413
        assert error_of(response)["data"]["reason"] == "body_too_large"
    assert "content-length" not in streamed.request.headers


@pytest.mark.anyio
async def test_transport_http_header_limit_431() -> None:
    """Request headers over the limit get 431."""
    async with stack(max_header_bytes=4 * 1024) as (gateway, client):
        response = await client.post(
            gateway.mcp_url,
            json=initialize_body(),
            headers={**MCP_HEADERS, "x-padding": "p" * 6000},
        )
    assert response.status_code == 431
    assert error_of(response)["data"]["reason"] == "headers_too_large"


@pytest.mark.anyio
async def test_transport_http_method_accept_and_version_rules() -> None:
    """Unsupported methods, Accept values and protocol versions are refused."""
    async with stack() as (gateway, client):
        url = gateway.mcp_url
        put = await client.put(url, content=b"{}")
        get_json = await client.get(url, headers={"accept": "application/json"})
        post_html = await client.post(
            url, json=initialize_body(), headers={**MCP_HEADERS, "accept": "text/html"}
        )
        post_empty_accept = await client.post(
            url,
            json=initialize_body(),
            headers={"accept": "", "content-type": "application/json"},
        )
        bogus = await client.post(
            url,
            json=initialize_body(),
            headers={**MCP_HEADERS, "mcp-protocol-version": "1999"},
        )
        stateless = await client.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "server/discover"},
            headers={**MCP_HEADERS, "mcp-protocol-version": "2026-07-28"},
        )

    assert put.status_code == 405
    assert put.headers["allow"] == "GET, POST, DELETE, OPTIONS"
    assert get_json.status_code == 406
    assert post_html.status_code == 406
    assert post_empty_accept.status_code == 406
    assert bogus.status_code == 400
    bogus_error = error_of(bogus)
    assert bogus_error["code"] == -32022
    assert bogus_error["data"]["reason"] == "unsupported_protocol_version"
    assert bogus_error["data"]["requested"] == "1999"
    assert bogus_error["data"]["supported"] == [
        "2024-11-05",
        "2025-03-26",
        "2025-06-18",
        "2025-11-25",
        "2026-07-28",
    ]
    # A 2026-07-28 request without its params._meta envelope.
    assert stateless.status_code == 400
    assert error_of(stateless)["code"] == -32602
    assert error_of(stateless)["data"]["reason"] == "missing_envelope"


@pytest.mark.anyio
async def test_transport_http_lenient_accept_served() -> None:
    """A POST with no Accept, */* or only one of the two types is served."""
    async with stack() as (gateway, client):
        for accept in (None, "*/*", "application/json", "text/event-stream"):
            headers = {"content-type": "application/json"}
            if accept is not None:
                headers["accept"] = accept
            response = await client.post(
                gateway.mcp_url, json=initialize_body(), headers=headers
            )
            assert response.status_code == 200, accept


@pytest.mark.anyio
async def test_transport_http_backend_down_jsonrpc_error_in_200() -> None:
    """With the backend gone, requests get JSON-RPC errors in 200, tools isError."""
    stop = anyio.Event()
    stopped = anyio.Event()

    async def serve_backend(*, task_status: Any) -> None:
        async with running_backend(BackendControls(), shutdown_timeout=0.5) as url:
            task_status.started(url)
            await stop.wait()
        stopped.set()

    async with anyio.create_task_group() as task_group:
        backend_url = await task_group.start(serve_backend)
        async with (
            running_gateway(backend_url) as gateway,
            httpx.AsyncClient(timeout=5.0) as client,
        ):
            session_id = await initialize(client, gateway.mcp_url)
            stop.set()
            await stopped.wait()
            listed = await client.post(
                gateway.mcp_url,
                json={"jsonrpc": "2.0", "id": 10, "method": "tools/list"},
                headers=session_headers(session_id),
            )
            called = await client.post(
                gateway.mcp_url,
                json={
                    "jsonrpc": "2.0",
                    "id": 9,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "x"}},
                },
                headers=session_headers(session_id),
            )
    assert listed.status_code == 200
    assert listed.json()["id"] == 10
    assert error_of(listed)["code"] == -32603
    assert error_of(listed)["message"] == "backend employees unavailable"
    assert error_of(listed)["data"]["reason"] == "backend_unavailable"
    assert "127.0.0.1" not in listed.text
    assert called.status_code == 200
    assert called.json()["id"] == 9
    assert called.json()["result"]["isError"] is True


class OutcomeRecorder(BaseStage[RequestContext, GatewayResponse]):
    """Records how each response ended, from its on_close callback."""

    outcomes: ClassVar[list[StreamOutcome]] = []

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        response = await call_next(ctx)

        async def record(outcome: StreamOutcome) -> None:
            self.outcomes.append(outcome)

        response.on_close.append(record)
        return response


def recording_stages(runtime: Runtime) -> list[Any]:
    return [
        OutcomeRecorder(name="recorder", config=NoConfig(), resources=runtime),
        *default_stages(runtime),
    ]


@pytest.mark.anyio
async def test_transport_http_client_disconnect_ends_stream_once() -> None:
    """A client leaving mid-stream ends the relay; on_close runs once, not completed."""
    OutcomeRecorder.outcomes = []
    controls = BackendControls()
    call = {
        "jsonrpc": "2.0",
        "id": 8,
        "method": "tools/call",
        "params": {
            "name": "gated_count",
            "arguments": {"n": 2},
            "_meta": {"progressToken": 1},
        },
    }
    async with stack(controls, chain_factory=recording_stages) as (gateway, client):
        session_id = await initialize(client, gateway.mcp_url)
        OutcomeRecorder.outcomes.clear()
        async with client.stream(
            "POST", gateway.mcp_url, json=call, headers=session_headers(session_id)
        ) as response:
            async for _chunk in response.aiter_raw():
                break
        with anyio.fail_after(2):
            while not OutcomeRecorder.outcomes:
                await anyio.sleep(0.01)
        controls.release.set()
    [outcome] = OutcomeRecorder.outcomes
    assert outcome.completed is False
    assert outcome.error == "client disconnected"
    assert outcome.bytes_sent > 0


class ExplodingStage(BaseStage[RequestContext, GatewayResponse]):
    """Raises inside the chain, as a stage with a bug would."""

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        raise RuntimeError("a bug in a stage")


def exploding_stages(runtime: Runtime) -> list[Any]:
    return [
        StandInSecurityStage(name="security", config=NoConfig(), resources=runtime),
        ExplodingStage(name="explode", config=NoConfig(), resources=runtime),
        SessionStage(name="session", config=NoConfig(), resources=runtime),
        ForwardStage(name="forward", config=NoConfig(), resources=runtime),
    ]


@pytest.mark.anyio
async def test_transport_http_chain_exception_jsonrpc_error() -> None:
    """An exception in the chain becomes a JSON-RPC internal error, never a 500."""
    async with stack(chain_factory=exploding_stages) as (gateway, client):
        posted = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": "x-1", "method": "tools/list"},
            headers=MCP_HEADERS,
        )
        streamed = await client.get(
            gateway.mcp_url, headers={"accept": "text/event-stream"}
        )
    assert posted.status_code == 200
    assert posted.json()["id"] == "x-1"
    assert error_of(posted)["data"]["reason"] == "internal_error"
    assert posted.headers["x-request-id"] in error_of(posted)["message"]
    assert "a bug in a stage" not in posted.text
    assert streamed.status_code == 405
    assert streamed.headers["allow"] == "POST, DELETE"
