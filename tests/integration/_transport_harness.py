"""A real MCP backend and the gateway's MCP data path, both on loopback.

The backend is an official-SDK ``MCPServer`` served by uvicorn, wrapped in a
recorder that keeps the headers of every request it receives and adds
headers a gateway must not relay (``Set-Cookie``, CORS, HSTS, ``Location``,
``Server``). The gateway is :class:`McpEndpoint` under uvicorn, running a
chain of a stand-in security stage, the ``session`` stage and the
``forward`` stage.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from gateway.agents import AgentResolver
from gateway.config import BackendConfig, GatewayConfig, ServerConfig, UpstreamConfig
from gateway.context import RequestContext
from gateway.demo.backends.common import HandshakeOnly, StatelessOnly
from gateway.demo.serve import bind_socket, run_app
from gateway.events import GatewayEvent
from gateway.facts import (
    AGENT,
    BACKEND_CREDENTIALS,
    DECISION,
    PRINCIPAL,
    AgentIdentity,
    BackendCredentials,
    Decision,
    Principal,
)
from gateway.mcp.backend import BackendClient
from gateway.mcp.endpoint import McpEndpoint
from gateway.mcp.response import GatewayResponse
from gateway.runtime import BackendRuntime, Runtime
from gateway.sessions import SessionStore
from gateway.stages.forward import ForwardStage
from gateway.stages.session import SessionStage
from gateway.store import MemoryStore
from pipeline import BaseStage, Chain, Event, EventBus, Next
from pipeline.stage import NoConfig

BACKEND_API_KEY = "backend-secret-key"
BACKEND_PATH = "/employees/mcp"
GATE_TIMEOUT = 5.0
"""Seconds the gated tool waits for its release before it finishes anyway."""

HOSTILE_RESPONSE_HEADERS = [
    (b"set-cookie", b"backend_session=leak; Path=/"),
    (b"access-control-allow-origin", b"*"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"location", b"http://elsewhere.test/"),
    (b"server", b"backend-server"),
]


@dataclass
class RecordedRequest:
    """One request as the backend received it."""

    method: str
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        """Return the body as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class BackendControls:
    """Levers and records shared between a test and the backend it runs.

    Attributes:
        release: Set by a test to let the gated tool finish.
        requests: Every request the backend received, in order.
        issued_session_ids: Every ``Mcp-Session-Id`` the backend sent back.
    """

    release: anyio.Event = field(default_factory=anyio.Event)
    cancelled: anyio.Event = field(default_factory=anyio.Event)
    requests: list[RecordedRequest] = field(default_factory=list)
    issued_session_ids: list[str] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        """Return the JSON-RPC messages the backend received, in order."""
        return [m for r in self.requests if isinstance(m := r.json(), dict)]


class RecordingApp:
    """ASGI wrapper that records requests and adds headers not to be relayed."""

    def __init__(self, app: Any, controls: BackendControls) -> None:
        self.app = app
        self.controls = controls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        recorded = RecordedRequest(scope["method"], headers)
        self.controls.requests.append(recorded)
        original_receive = receive

        async def receive(*_args: Any) -> Any:
            message = await original_receive()
            if message["type"] == "http.request":
                recorded.body += message.get("body", b"")
            return message

        async def send_with_extras(message: Any) -> None:
            if message["type"] == "http.response.start":
                response_headers = list(message.get("headers", []))
                for name, value in response_headers:
                    if name.lower() == b"mcp-session-id":
                        self.controls.issued_session_ids.append(value.decode())
                message = {
                    **message,
                    "headers": response_headers + HOSTILE_RESPONSE_HEADERS,
                }
            await send(message)

        await self.app(scope, receive, send_with_extras)


def create_backend_app(
    controls: BackendControls,
    *,
    json_response: bool = False,
    stateless: bool = False,
    era: str = "both",
) -> RecordingApp:
    """Build the test backend: an official-SDK server with four tools.

    ``era`` is ``both`` (the SDK serves both protocol eras), ``handshake``
    (it refuses 2026-07-28) or ``stateless`` (it serves only 2026-07-28).
    """
    server = MCPServer("transport-test-backend")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def gated_count(n: int, ctx: Context) -> str:
        """Report progress 1, wait for the test's release, then count to n."""
        await ctx.report_progress(1, n)
        try:
            with anyio.move_on_after(GATE_TIMEOUT):
                await controls.release.wait()
        except anyio.get_cancelled_exc_class():
            controls.cancelled.set()
            raise
        for step in range(2, n + 1):
            await ctx.report_progress(step, n)
        released = "released" if controls.release.is_set() else "timed out"
        return f"counted to {n} ({released})"

    @server.tool()
    def fail(reason: str) -> str:
        """Fail as a tool does: an isError result naming the reason."""
        raise ToolError(f"tool failed: {reason}")

    app: Any = server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=json_response,
        stateless_http=stateless,
    )
    if era == "handshake":
        app = HandshakeOnly(app)
    elif era == "stateless":
        app = StatelessOnly(app)
    return RecordingApp(app, controls)


class StandInSecurityStage(BaseStage[RequestContext, GatewayResponse]):
    """Provide the security facts from test headers.

    It replaces the authenticate, identify_agent, authorize and exchange
    stages, which their own tests cover with real tokens. The user comes from
    ``X-Test-User`` (default ``alice``), the agent from ``X-Test-Agent``
    (default ``cursor``); the backend credential is a fixed API key header.
    """

    provides: ClassVar[frozenset[str]] = frozenset(
        {PRINCIPAL, AGENT, DECISION, BACKEND_CREDENTIALS}
    )

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        user = ctx.headers.get("x-test-user", "alice")
        agent = ctx.headers.get("x-test-agent", "cursor")
        ctx.provide(
            PRINCIPAL,
            Principal(
                iss="https://idp.test", sub=user, client_id="client", grant_id="g"
            ),
        )
        ctx.provide(
            AGENT,
            AgentIdentity(id=agent, verified=True, trust="verified", client_id="c"),
        )
        ctx.provide(DECISION, Decision(allowed=True, backend=ctx.backend_name))
        ctx.provide(
            BACKEND_CREDENTIALS,
            BackendCredentials(
                headers={"X-Api-Key": BACKEND_API_KEY}, kind="static-key"
            ),
        )
        return await call_next(ctx)


@dataclass
class GatewayHarness:
    """A running gateway data path.

    Attributes:
        base_url: The gateway's base URL.
        mcp_url: The backend's MCP endpoint at the gateway.
        runtime: The runtime the endpoint serves.
        events: Every event published, in order (call :meth:`settle` first).
    """

    base_url: str
    mcp_url: str
    runtime: Runtime
    events: list[Event]

    async def settle(self) -> None:
        """Wait until the bus delivered every published event."""
        await self.runtime.bus.drain(timeout=2.0)
        await anyio.sleep(0.01)

    def events_of(self, kind: type[GatewayEvent]) -> list[Any]:
        """Return the events of one type."""
        return [event for event in self.events if isinstance(event, kind)]


@contextlib.asynccontextmanager
async def running_gateway(
    backend_url: str,
    *,
    max_body_bytes: int = 64 * 1024,
    max_header_bytes: int = 8 * 1024,
    allowed_origins: list[str] | None = None,
    backend_timeout: float = 5.0,
    chain_factory: Callable[[Runtime], list[Any]] | None = None,
    backend_protocol: str = "auto",
    server_options: dict[str, Any] | None = None,
    backend_options: dict[str, Any] | None = None,
) -> AsyncIterator[GatewayHarness]:
    """Serve the MCP data path for one backend until the context exits.

    ``server_options`` and ``backend_options`` set further fields of the
    ``server`` and the backend's config.
    """
    sock = bind_socket()
    port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    backend = BackendConfig(
        path=BACKEND_PATH,
        url=backend_url,
        timeout=backend_timeout,
        protocol=backend_protocol,  # type: ignore[arg-type]
        **(backend_options or {}),
    )
    config = GatewayConfig(
        server=ServerConfig(
            public_url=base_url,
            port=port,
            max_body_bytes=max_body_bytes,
            max_header_bytes=max_header_bytes,
            allowed_origins=allowed_origins or [],
            **(server_options or {}),
        ),
        upstream=UpstreamConfig(issuer="http://127.0.0.1:9", client_id="unused"),
        backends={"employees": backend},
    )
    store = MemoryStore()
    bus = EventBus()
    events: list[Event] = []

    async def collect(event: Event) -> None:
        events.append(event)

    bus.subscribe("test-collector", collect)
    # These stages use no security services, so None is passed for them.
    runtime = Runtime(
        config=config,
        store=store,
        bus=bus,
        keys=None,  # type: ignore[arg-type]
        grants=None,  # type: ignore[arg-type]
        upstream=None,  # type: ignore[arg-type]
        sessions=SessionStore(store),
        credentials=None,  # type: ignore[arg-type]
        agents=AgentResolver(config),
    )
    if chain_factory is None:
        stages = default_stages(runtime)
    else:
        stages = chain_factory(runtime)
    client = BackendClient(backend)
    runtime.backends["employees"] = BackendRuntime(
        name="employees",
        config=backend,
        resource=base_url + BACKEND_PATH,
        chain=Chain(stages),
        client=client,
    )
    runtime.by_path[BACKEND_PATH] = "employees"
    try:
        async with anyio.create_task_group() as task_group:
            bus.start(task_group)
            async with run_app(McpEndpoint(runtime), sock=sock):
                yield GatewayHarness(base_url, base_url + BACKEND_PATH, runtime, events)
            task_group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def default_stages(runtime: Runtime) -> list[Any]:
    """Return the stand-in security stage, ``session`` and ``forward``."""
    return [
        StandInSecurityStage(name="security", config=NoConfig(), resources=runtime),
        SessionStage(name="session", config=NoConfig(), resources=runtime),
        ForwardStage(name="forward", config=NoConfig(), resources=runtime),
    ]


@contextlib.asynccontextmanager
async def running_backend(
    controls: BackendControls,
    *,
    json_response: bool = False,
    stateless: bool = False,
    port: int = 0,
    shutdown_timeout: float = 3.0,
    era: str = "both",
) -> AsyncIterator[str]:
    """Serve the test backend; yields its MCP URL."""
    app = create_backend_app(
        controls, json_response=json_response, stateless=stateless, era=era
    )
    sock = bind_socket(port=port)
    async with run_app(app, sock=sock, shutdown_timeout=shutdown_timeout) as running:
        yield f"{running.url}/mcp"


MCP_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
}


def initialize_body(request_id: Any = 0, version: str = "2025-06-18") -> dict[str, Any]:
    """Return an ``initialize`` request as a raw client would send it."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "raw-test-client", "version": "0"},
        },
    }
