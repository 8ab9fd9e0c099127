"""One request is one trace: client, gateway stages, ID-JAG exchange, IdP, backend.

The stack is the demo's (dev IdP, both demo backends, the gateway with the
demo config) on ephemeral ports, with the gateway's own tracer provider
setup (:func:`gateway.telemetry.build_tracer_provider`) exporting over
OTLP/HTTP to a real receiver that decodes the protobuf. Every component
runs in this process and exports through that one provider, as in
``agent-proxy demo``. The provider is installed for this module only.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _case_support import bearer, modern_request, session_headers, sign_in
from _otlp_receiver import (
    STATUS_ERROR,
    ExportedSpan,
    OtlpReceiver,
    flush,
    installed_provider,
    otlp_receiver,
)
from _transport_harness import initialize_body
from opentelemetry.sdk.trace import TracerProvider

from gateway.app import open_gateway
from gateway.config.model import TelemetryConfig, TracingConfig
from gateway.demo.driver import MemoryTokenStorage, run_client
from gateway.demo.runner import (
    DEMO_PORTS,
    DemoStack,
    demo_config,
    demo_peer_apps,
)
from gateway.demo.serve import bind_socket, run_app
from gateway.telemetry import build_tracer_provider

pytestmark = pytest.mark.anyio

TOOL = "get_employee"
ARGUMENTS = {"employee_id": "E1001"}
DEMO_STAGES = (
    "audit",
    "authenticate",
    "identify_agent",
    "authorize",
    "exchange",
    "session",
    "forward",
)
GATEWAY_SCOPE = "gateway.mcp"
SDK_SCOPE = "mcp-python-sdk"
HTTPX_SCOPE = "opentelemetry.instrumentation.httpx"


class IdpGate:
    """Delays the dev IdP's token exchange while ``delay`` is above zero."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.delay = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            self.delay
            and scope["type"] == "http"
            and scope["path"] == "/oauth2/v1/token"
        ):
            await anyio.sleep(self.delay)
        await self.app(scope, receive, send)


@dataclass
class TracedDemo:
    """The running demo, where its spans go, and alice's token for ``claude-code``."""

    stack: DemoStack
    receiver: OtlpReceiver
    provider: TracerProvider
    gate: IdpGate
    storage: MemoryTokenStorage

    @property
    def url(self) -> str:
        return self.stack.mcp_url("employees")

    @property
    def token(self) -> str:
        assert self.storage.tokens is not None
        return self.storage.tokens.access_token

    def cold_cache(self) -> None:
        self.stack.gateway.runtime.credentials.cache.clear()

    async def spans(self) -> list[ExportedSpan]:
        await flush(self.provider)
        with self.receiver.lock:
            return list(self.receiver.spans)

    async def server_span(self, request_id: str) -> ExportedSpan:
        """Return the gateway's server span of the request with this X-Request-Id."""
        found = [
            span
            for span in await self.spans()
            if span.attributes.get("agent_proxy.request_id") == request_id
        ]
        assert len(found) == 1, found
        return found[0]


@contextlib.asynccontextmanager
async def running_demo(var_dir: Path) -> AsyncIterator[tuple[DemoStack, IdpGate]]:
    """Run the demo as ``run_demo`` does, with a gate in front of the dev IdP."""
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    apps = demo_peer_apps(config, urls)
    gate = IdpGate(apps["idp"])
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(run_app(gate, sock=sockets["idp"]))
        for name in ("employees", "partners"):
            await stack.enter_async_context(run_app(apps[name], sock=sockets[name]))
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(run_app(gateway.asgi, sock=sockets["gateway"]))
        demo = DemoStack(
            gateway=gateway,
            config=config,
            urls=urls,
            audit_path=var_dir / "audit.jsonl",
        )
        yield demo, gate


@pytest.fixture(scope="module")
async def traced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TracedDemo]:
    with otlp_receiver() as receiver:
        telemetry = TelemetryConfig(
            tracing=TracingConfig(endpoint=receiver.endpoint, sampler="always_on")
        )
        provider = build_tracer_provider(telemetry, environ={})
        assert provider is not None
        try:
            with installed_provider(provider):
                var_dir = tmp_path_factory.mktemp("traced-demo")
                async with running_demo(var_dir) as (stack, gate):
                    storage = await sign_in(
                        stack, "employees", client_name="claude-code"
                    )
                    yield TracedDemo(stack, receiver, provider, gate, storage)
        finally:
            await anyio.to_thread.run_sync(provider.shutdown)


def only(spans: list[ExportedSpan], **match: Any) -> ExportedSpan:
    """Return the one span whose fields equal ``match``."""
    found = [
        span
        for span in spans
        if all(getattr(span, key) == value for key, value in match.items())
    ]
    assert len(found) == 1, (match, [(s.name, s.scope, s.parent_id) for s in found])
    return found[0]


def new_traceparent() -> tuple[str, str, str]:
    """Return a sampled ``traceparent`` of a made-up client span, and its ids."""
    trace_id = secrets.token_hex(16)
    span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def stage_chain(spans: list[ExportedSpan], server: ExportedSpan) -> dict[str, Any]:
    """Return the stage spans under ``server``, checking that each nests in the last."""
    chain: dict[str, ExportedSpan] = {}
    parent = server
    for stage in DEMO_STAGES:
        span = only(spans, name=f"stage {stage}", parent_id=parent.span_id)
        chain[stage] = span
        parent = span
    return chain


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_trace_tools_call_exchange_one_trace(
    traced: TracedDemo, mode: str
) -> None:
    """A tools/call that exchanges is one trace from client span to backend tool."""
    seen: set[str] = set()

    async def just_before_call(_name: str, _report: Any) -> None:
        seen.update(span.span_id for span in await traced.spans())
        traced.cold_cache()

    report = await run_client(
        traced.url,
        client_name="claude-code",
        storage=traced.storage,
        calls=[(TOOL, ARGUMENTS)],
        mode=mode,
        between_calls=just_before_call,
    )
    assert report.results[TOOL][0] is False, report.results
    new = [span for span in await traced.spans() if span.span_id not in seen]
    server = only(new, name=f"tools/call {TOOL}", scope=GATEWAY_SCOPE)
    spans = [span for span in new if span.trace_id == server.trace_id]

    # The client's span is the parent, through params._meta.
    client = only(spans, span_id=server.parent_id)
    assert client.name == f"MCP send tools/call {TOOL}"
    assert client.kind == "CLIENT"
    assert client.scope == SDK_SCOPE
    assert server.kind == "SERVER"

    attributes = server.attributes
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == TOOL
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["jsonrpc.request.id"]
    assert attributes["mcp.protocol.version"] == report.protocol_version
    assert attributes["agent_proxy.backend"] == "employees"
    assert attributes["agent_proxy.agent.id"] == "claude-code"
    assert attributes["agent_proxy.agent.trust"] == "self-asserted"
    issuer = traced.stack.urls["idp"]
    expected_hash = hashlib.sha256(f"{issuer} 00u_alice".encode()).hexdigest()
    assert attributes["agent_proxy.user.hash"] == expected_hash
    assert "agent_proxy.user.sub" not in attributes
    assert attributes["http.response.status_code"] == 200
    if report.session_id is not None:
        assert attributes["mcp.session.id"] != report.session_id
        assert len(attributes["mcp.session.id"]) == 16

    stages = stage_chain(spans, server)
    assert stages["exchange"].attributes["agent_proxy.exchange.cache"] == "miss"

    exchange = only(spans, name="exchange id-jag", parent_id=stages["exchange"].span_id)
    assert exchange.attributes["agent_proxy.exchange.cache"] == "miss"
    routes = {
        "idjag token_exchange": "POST /oauth2/v1/token",
        "idjag jwt_bearer": "POST /oauth2/employees/v1/token",
    }
    for step, idp_route in routes.items():
        step_span = only(spans, name=step, parent_id=exchange.span_id)
        http_call = only(spans, parent_id=step_span.span_id, scope=HTTPX_SCOPE)
        assert http_call.kind == "CLIENT"
        idp_side = only(spans, parent_id=http_call.span_id)
        assert idp_side.name == idp_route
        assert idp_side.kind == "SERVER"
        assert idp_side.attributes["agent_proxy.component"] == "devidp"
        assert idp_side.attributes["http.response.status_code"] == 200

    backend_call = only(spans, name="POST", parent_id=stages["forward"].span_id)
    assert backend_call.kind == "CLIENT"
    backend_http = only(spans, parent_id=backend_call.span_id)
    assert backend_http.name == "POST /mcp"
    assert backend_http.attributes["agent_proxy.component"] == "employees"
    # The backend's tool span continues the gateway's context from _meta.
    tool = only(spans, name=f"tools/call {TOOL}", scope=SDK_SCOPE)
    assert tool.kind == "SERVER"
    assert tool.parent_id == stages["forward"].span_id
    assert "error.type" not in tool.attributes

    # Nothing of this call landed in another trace.
    elsewhere = [
        span
        for span in new
        if span.trace_id != server.trace_id
        and (span.name == "exchange id-jag" or span.name.startswith("tools/call"))
    ]
    assert elsewhere == []


async def call_2026(
    traced: TracedDemo,
    *,
    header: str | None = None,
    meta: str | None = None,
    tool: str = TOOL,
    arguments: dict[str, Any] | None = None,
) -> httpx.Response:
    """Send one 2026-07-28 tools/call with trace context in the given carriers."""
    body, headers = modern_request(
        1, "tools/call", {"name": tool, "arguments": arguments or ARGUMENTS}
    )
    if meta is not None:
        body["params"]["_meta"]["traceparent"] = meta
    if header is not None:
        headers["traceparent"] = header
    headers["authorization"] = f"Bearer {traced.token}"
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.post(traced.url, json=body, headers=headers)


async def test_trace_handshake_header_traceparent_parent(traced: TracedDemo) -> None:
    """In 2025-11-25 the traceparent header makes the client's span the parent."""
    traceparent, trace_id, span_id = new_traceparent()
    version = "2025-11-25"
    async with httpx.AsyncClient(timeout=10.0) as client:
        opened = await client.post(
            traced.url,
            json=initialize_body(version=version),
            headers=bearer(traced.token),
        )
        assert opened.status_code == 200, opened.text
        headers = session_headers(
            opened.headers["mcp-session-id"],
            version,
            authorization=f"Bearer {traced.token}",
        )
        await client.post(
            traced.url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=headers,
        )
        call = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": TOOL, "arguments": ARGUMENTS},
        }
        response = await client.post(
            traced.url, json=call, headers={**headers, "traceparent": traceparent}
        )
    assert response.status_code == 200

    server = await traced.server_span(response.headers["x-request-id"])
    assert server.trace_id == trace_id
    assert server.parent_id == span_id
    assert server.attributes["mcp.protocol.version"] == version
    spans = await traced.spans()
    tool = only(spans, trace_id=trace_id, name=f"tools/call {TOOL}", scope=SDK_SCOPE)
    assert tool.trace_id == trace_id


@pytest.mark.parametrize("carrier", ["header", "meta"])
async def test_trace_stateless_traceparent_parent(
    traced: TracedDemo, carrier: str
) -> None:
    """In 2026-07-28 the header or params._meta makes the client's span the parent."""
    traceparent, trace_id, span_id = new_traceparent()
    if carrier == "header":
        response = await call_2026(traced, header=traceparent)
    else:
        response = await call_2026(traced, meta=traceparent)
    assert response.status_code == 200

    server = await traced.server_span(response.headers["x-request-id"])
    assert server.trace_id == trace_id
    assert server.parent_id == span_id
    assert server.links == []
    spans = await traced.spans()
    forward = only(spans, trace_id=trace_id, name="stage forward")
    tool = only(spans, trace_id=trace_id, name=f"tools/call {TOOL}", scope=SDK_SCOPE)
    assert tool.parent_id == forward.span_id


async def test_trace_meta_and_header_meta_wins_header_linked(
    traced: TracedDemo,
) -> None:
    """With both carriers, _meta is the parent and the header's span a link."""
    header, header_trace, header_span = new_traceparent()
    meta, meta_trace, meta_span = new_traceparent()
    response = await call_2026(traced, header=header, meta=meta)
    assert response.status_code == 200

    server = await traced.server_span(response.headers["x-request-id"])
    assert server.trace_id == meta_trace
    assert server.parent_id == meta_span
    assert server.links == [(header_trace, header_span)]


@pytest.mark.parametrize(
    "malformed",
    [
        "00-not-a-trace-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
async def test_trace_malformed_traceparent_new_trace(
    traced: TracedDemo, malformed: str
) -> None:
    """A malformed traceparent in either carrier is ignored: a new trace starts."""
    response = await call_2026(traced, header=malformed, meta=malformed)
    assert response.status_code == 200
    message = msgspec.json.decode(response.content)
    assert "result" in message, message

    server = await traced.server_span(response.headers["x-request-id"])
    assert server.parent_id is None
    assert server.trace_id not in malformed


async def test_trace_denied_tool_error_on_span(traced: TracedDemo) -> None:
    """A denied call records status ERROR, error.type and the JSON-RPC code."""
    response = await call_2026(
        traced, tool="update_salary", arguments={"employee_id": "E1001", "salary": 1}
    )
    assert response.status_code == 200
    error = msgspec.json.decode(response.content)["error"]
    assert error["data"]["reason"] == "tool_denied"

    server = await traced.server_span(response.headers["x-request-id"])
    assert server.status_code == STATUS_ERROR
    assert server.attributes["error.type"] == "tool_denied"
    assert server.attributes["rpc.response.status_code"] == str(error["code"])
    assert server.name == "tools/call update_salary"


async def test_trace_concurrent_cold_cache_shared_in_flight(
    traced: TracedDemo,
) -> None:
    """Two requests on a cold cache: one exchanges, the other shares its flight."""
    traced.cold_cache()
    traced.gate.delay = 0.3
    responses: list[httpx.Response] = []

    async def call() -> None:
        responses.append(await call_2026(traced))

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await anyio.sleep(0.05)
            group.start_soon(call)
    finally:
        traced.gate.delay = 0.0
    assert [response.status_code for response in responses] == [200, 200]
    hit = await call_2026(traced)

    results: list[str] = []
    for response in [*responses, hit]:
        server = await traced.server_span(response.headers["x-request-id"])
        spans = [s for s in await traced.spans() if s.trace_id == server.trace_id]
        stage = stage_chain(spans, server)["exchange"]
        results.append(stage.attributes["agent_proxy.exchange.cache"])
        exchanges = [s for s in spans if s.name == "exchange id-jag"]
        assert len(exchanges) == (1 if results[-1] == "miss" else 0)
    # The two finish in either order once the exchange is done.
    assert sorted(results[:2]) == ["miss", "shared-in-flight"]
    assert results[2] == "hit"


@pytest.mark.parametrize(
    ("mode", "present", "absent"),
    [
        ("plain", {"agent_proxy.user.sub": "00u_alice"}, "agent_proxy.user.hash"),
        ("omit", {}, "agent_proxy.user.hash"),
    ],
)
async def test_trace_user_identifiers_setting(
    traced: TracedDemo, mode: str, present: dict[str, str], absent: str
) -> None:
    """``telemetry.user_identifiers`` decides how the server span names the user."""
    runtime = traced.stack.gateway.runtime
    config = runtime.config
    telemetry = msgspec.structs.replace(config.telemetry, user_identifiers=mode)
    runtime.config = msgspec.structs.replace(config, telemetry=telemetry)
    try:
        response = await call_2026(traced)
    finally:
        runtime.config = config
    server = await traced.server_span(response.headers["x-request-id"])
    for key, value in present.items():
        assert server.attributes[key] == value
    assert absent not in server.attributes
    if mode == "omit":
        assert not any(key.startswith("agent_proxy.user") for key in server.attributes)
