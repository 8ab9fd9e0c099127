"""Helpers shared by the tests of the public cases (``test_case_*.py``).

The stacks are the real ones of :mod:`_transport_harness` (an official-SDK
backend and the gateway's MCP endpoint on loopback) and of the demo (dev IdP,
demo backends and the whole gateway with real tokens). ``ScriptedBackend``
is for replies that no official-SDK server sends, such as a 502 HTML page or
a 204 to a notification; each test that uses it states the reason.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import msgspec
from _transport_harness import (
    MCP_HEADERS,
    GatewayHarness,
    initialize_body,
    running_gateway,
)
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import (
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    ToolListChangedNotification,
)
from pydantic import BaseModel

from gateway.demo.driver import MemoryTokenStorage, run_client
from gateway.demo.runner import DemoStack
from gateway.demo.serve import run_app
from gateway.mcp.sse import SseParser

MODERN_VERSION = "2026-07-28"
"""The stateless revision: no ``initialize``, no sessions, routing headers."""
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
HEADER_MISMATCH = -32020
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def messages_of(response: httpx.Response) -> list[dict[str, Any]]:
    """Return the JSON-RPC messages of a JSON or event-stream body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        parser = SseParser()
        return [json.loads(e.data) for e in parser.feed(response.content) if e.data]
    return [json.loads(response.content)]


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """Return the one message of a response that carries an ``id``."""
    answers = [m for m in messages_of(response) if "id" in m and "method" not in m]
    assert len(answers) == 1, response.content
    return answers[0]


def session_headers(
    session_id: str, version: str = "2025-06-18", **extra: str
) -> dict[str, str]:
    """Return the headers of a request in a handshake-era session."""
    return {
        **MCP_HEADERS,
        "mcp-session-id": session_id,
        "mcp-protocol-version": version,
        **extra,
    }


async def open_session(
    client: httpx.AsyncClient,
    url: str,
    version: str = "2025-06-18",
    **extra: str,
) -> dict[str, str]:
    """Run ``initialize`` and ``notifications/initialized``; return session headers."""
    response = await client.post(
        url,
        json=initialize_body(version=version),
        headers={**MCP_HEADERS, **extra},
    )
    assert response.status_code == 200, response.text
    headers = session_headers(response.headers["mcp-session-id"], version, **extra)
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    acked = await client.post(url, json=initialized, headers=headers)
    assert acked.status_code == 202, acked.text
    return headers


def tools_call(request_id: Any, name: str, **arguments: Any) -> dict[str, Any]:
    """Return a ``tools/call`` request."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def modern_request(
    request_id: Any, method: str, params: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Return a 2026-07-28 request body and its routing headers.

    The body carries the ``_meta`` envelope keys; the headers carry
    ``MCP-Protocol-Version``, ``Mcp-Method`` and, for the methods that name
    something, ``Mcp-Name``.
    """
    all_params = dict(params or {})
    all_params["_meta"] = {
        PROTOCOL_VERSION_KEY: MODERN_VERSION,
        CLIENT_CAPABILITIES_KEY: {},
    }
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": all_params}
    headers = {
        **MCP_HEADERS,
        "mcp-protocol-version": MODERN_VERSION,
        "mcp-method": method,
    }
    name_key = NAME_PARAMS.get(method)
    if name_key is not None:
        headers["mcp-name"] = str(all_params[name_key])
    return body, headers


@dataclass
class Reply:
    """What a scripted backend sends back: status, headers and body chunks."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


@dataclass
class ScriptedRequest:
    """One request as the scripted backend received it."""

    method: str
    headers: dict[str, str]
    body: bytes

    @property
    def message(self) -> Any:
        """The decoded JSON body, or None."""
        return msgspec.json.decode(self.body) if self.body else None


Script = Callable[[ScriptedRequest], Awaitable[Reply]]

SCRIPTED_SESSION = "scripted-backend-session"


def initialize_reply(message: dict[str, Any], session_id: str) -> Reply:
    """Return a backend's JSON reply to ``initialize`` with a session id."""
    result = {
        "protocolVersion": message["params"].get("protocolVersion", "2025-06-18"),
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "scripted", "version": "0"},
    }
    body = msgspec.json.encode(
        {"jsonrpc": "2.0", "id": message["id"], "result": result}
    )
    return Reply(
        200,
        {"content-type": "application/json", "mcp-session-id": session_id},
        [body],
    )


def json_reply(payload: Any, status: int = 200) -> Reply:
    """Return a JSON reply."""
    return Reply(
        status, {"content-type": "application/json"}, [msgspec.json.encode(payload)]
    )


class ScriptedBackend:
    """An ASGI backend whose every reply comes from a test's script.

    Records each request (method, headers, body) in ``requests``.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[ScriptedRequest] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = ScriptedRequest(scope["method"], headers, body)
        self.requests.append(request)
        reply = await self.script(request)
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (name.encode(), value.encode())
                    for name, value in reply.headers.items()
                ],
            }
        )
        for chunk in reply.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def posts(self, method: str) -> list[ScriptedRequest]:
        """Return the POSTs whose JSON-RPC method is ``method``."""
        return [
            r
            for r in self.requests
            if r.method == "POST"
            and isinstance(r.message, dict)
            and r.message.get("method") == method
        ]


@contextlib.asynccontextmanager
async def scripted_stack(
    script: Script, **gateway_options: Any
) -> AsyncIterator[tuple[GatewayHarness, httpx.AsyncClient, ScriptedBackend]]:
    """Run a scripted backend behind the gateway."""
    backend = ScriptedBackend(script)
    async with (
        run_app(backend) as running,
        running_gateway(f"{running.url}/mcp", **gateway_options) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        yield gateway, client, backend


async def sign_in(
    stack: DemoStack, backend: str, *, user: str = "alice", client_name: str = "cursor"
) -> MemoryTokenStorage:
    """Sign a demo user in through the gateway's OAuth front door."""
    storage = MemoryTokenStorage()
    await run_client(
        stack.mcp_url(backend),
        client_name=client_name,
        login_hint=user,
        calls=[],
        storage=storage,
    )
    assert storage.tokens is not None
    return storage


def bearer(token: str, **extra: str) -> dict[str, str]:
    """Return MCP request headers with a bearer token."""
    return {**MCP_HEADERS, "authorization": f"Bearer {token}", **extra}


@dataclass
class CaseControls:
    """Levers and records of the case backend.

    Attributes:
        release: Set by a test to let the waiting tools finish.
        requests: Every request the backend received, body included.
        cancelled: Tags of the ``wait_for_release`` calls that were cancelled.
        finished: Tags of the ``wait_for_release`` calls that finished.
    """

    release: anyio.Event = field(default_factory=anyio.Event)
    requests: list[ScriptedRequest] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)

    def posts(self, method: str) -> list[ScriptedRequest]:
        """Return the POSTs whose JSON-RPC method is ``method``."""
        return [
            r
            for r in self.requests
            if r.method == "POST"
            and isinstance(r.message, dict)
            and r.message.get("method") == method
        ]


class Name(BaseModel):
    """What the ``ask_name`` tool elicits."""

    name: str


WAIT_LIMIT = 5.0
"""Seconds a waiting tool waits for its release before it finishes anyway."""


def create_case_backend(controls: CaseControls, *, json_response: bool = False) -> Any:
    """Build an official-SDK backend with the tools the case tests need.

    The server keeps per-session state (``counter_*``), sends notifications
    on the request's stream and on the session's GET stream, and requests
    input from the client (elicitation). The app records every request it gets.
    """
    server = MCPServer("case-backend")
    counters: dict[str, int] = {}

    def session_key(ctx: Context) -> str:
        # The backend's own session id: its session objects are per request.
        headers = ctx.headers or {}
        return str(headers.get("mcp-session-id", "none"))

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def paced_count(n: int, pause: float, ctx: Context) -> str:
        """Report progress 1..n, pausing ``pause`` seconds after each step."""
        for step in range(1, n + 1):
            await ctx.report_progress(step, n)
            if step < n:
                await anyio.sleep(pause)
        return f"counted to {n}"

    @server.tool()
    async def log_then_wait(ctx: Context) -> str:
        """Send a log message and tools/list_changed, then wait for release."""
        session = ctx.request_context.session
        log = LoggingMessageNotification(
            params=LoggingMessageNotificationParams(level="error", data="working")
        )
        await session.send_notification(log, related_request_id=ctx.request_id)
        await session.send_notification(
            ToolListChangedNotification(), related_request_id=ctx.request_id
        )
        with anyio.move_on_after(WAIT_LIMIT):
            await controls.release.wait()
        return "done"

    @server.tool()
    async def ask_name(ctx: Context) -> str:
        """Ask the client for a name (elicitation) and greet it."""
        answer = await ctx.elicit("Who is calling?", Name)
        if answer.action == "accept":
            return f"hello {answer.data.name}"
        return f"no name ({answer.action})"

    @server.tool()
    async def announce_tools_changed(ctx: Context) -> str:
        """Send tools/list_changed on the session's own stream, not this request's."""
        await ctx.request_context.session.send_notification(
            ToolListChangedNotification()
        )
        return "announced"

    @server.tool()
    def counter_increment(ctx: Context) -> int:
        """Add one to this backend session's counter and return it."""
        key = session_key(ctx)
        counters[key] = counters.get(key, 0) + 1
        return counters[key]

    @server.tool()
    def counter_get(ctx: Context) -> int:
        """Return this backend session's counter."""
        return counters.get(session_key(ctx), 0)

    @server.tool()
    async def wait_for_release(tag: str, ctx: Context, progress: bool = False) -> str:
        """Wait for the test's release; record whether the call was cancelled.

        With ``progress``, report progress 0 first, so that the response is an
        event stream that has started.
        """
        if progress:
            await ctx.report_progress(0, 1)
        try:
            with anyio.fail_after(WAIT_LIMIT):
                await controls.release.wait()
        except anyio.get_cancelled_exc_class():
            controls.cancelled.append(tag)
            raise
        controls.finished.append(tag)
        return f"released {tag}"

    app = server.streamable_http_app(
        streamable_http_path="/mcp", json_response=json_response
    )
    return _BodyRecorder(app, controls)


class _BodyRecorder:
    """ASGI wrapper that records each request's method, headers and body."""

    def __init__(self, app: Any, controls: CaseControls) -> None:
        self.app = app
        self.controls = controls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = ScriptedRequest(scope["method"], headers, b"")
        self.controls.requests.append(request)

        async def recording_receive() -> Any:
            event = await receive()
            if event["type"] == "http.request":
                request.body += event.get("body", b"")
            return event

        await self.app(scope, recording_receive, send)


@contextlib.asynccontextmanager
async def running_case_backend(
    controls: CaseControls, *, json_response: bool = False, port: int = 0
) -> AsyncIterator[str]:
    """Serve the case backend; yield its MCP URL."""
    app = create_case_backend(controls, json_response=json_response)
    async with run_app(app, port=port, shutdown_timeout=0.5) as running:
        yield f"{running.url}/mcp"


@contextlib.asynccontextmanager
async def case_stack(
    controls: CaseControls | None = None,
    *,
    json_response: bool = False,
    **gateway_options: Any,
) -> AsyncIterator[tuple[GatewayHarness, httpx.AsyncClient, CaseControls]]:
    """Run the case backend behind the gateway; yield both and an HTTP client."""
    controls = controls or CaseControls()
    async with (
        running_case_backend(controls, json_response=json_response) as backend_url,
        running_gateway(backend_url, **gateway_options) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        yield gateway, client, controls


async def refresh_access_token(stack: DemoStack, storage: MemoryTokenStorage) -> str:
    """Redeem the stored refresh token at the gateway; return the new access token."""
    assert storage.tokens is not None
    assert storage.client_info is not None
    form = {
        "grant_type": "refresh_token",
        "refresh_token": storage.tokens.refresh_token or "",
        "client_id": storage.client_info.client_id or "",
    }
    if storage.client_info.client_secret:
        form["client_secret"] = storage.client_info.client_secret
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(stack.urls["gateway"] + "/oauth2/token", data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


HANDSHAKE_ONLY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")


class HandshakeOnlyBackend:
    """A scripted backend that speaks only the handshake era, as 2025 servers do.

    It rejects a 2026-07-28 version header with 400, requires its own session
    id after ``initialize`` (400 without, 404 for an unknown one) and keeps
    state per session. Its tools: ``echo`` (``text``, after ``delay``
    seconds), ``counter_increment`` and ``counter_get``. The official SDK
    server cannot stand in here: it serves both eras.

    Attributes:
        sessions: Counter per session id issued.
        seen_ids: The JSON-RPC id of every request, in arrival order.
    """

    def __init__(self) -> None:
        self.sessions: dict[str, int] = {}
        self.seen_ids: list[Any] = []

    async def __call__(self, request: ScriptedRequest) -> Reply:
        version = request.headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_ONLY_VERSIONS:
            return json_reply(_error(None, -32600, "Unsupported protocol version"), 400)
        if request.method != "POST":
            return Reply(405, {"allow": "POST"})
        message = request.message
        if not isinstance(message, dict):
            return json_reply(_error(None, -32700, "Parse error"), 400)
        if message.get("method") == "initialize":
            session_id = f"handshake-{len(self.sessions) + 1}"
            self.sessions[session_id] = 0
            return initialize_reply(message, session_id)
        session_id = request.headers.get("mcp-session-id")
        if session_id is None:
            return json_reply(_error(None, -32600, "Missing session ID"), 400)
        if session_id not in self.sessions:
            return json_reply(_error(None, -32600, "Session not found"), 404)
        if "id" not in message:
            return Reply(202)
        self.seen_ids.append(message["id"])
        return json_reply(await self._answer(session_id, message))

    async def _answer(self, session_id: str, message: dict[str, Any]) -> Any:
        request_id = message["id"]
        method = message.get("method")
        params = message.get("params") or {}
        if method == "ping":
            return {"jsonrpc": "2.0", "id": request_id, "result": {}}
        if method == "tools/list":
            tools = [
                {"name": name, "inputSchema": {"type": "object"}}
                for name in ("echo", "counter_increment", "counter_get")
            ]
            return {"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}}
        if method != "tools/call":
            return _error(request_id, -32601, "Method not found")
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if name == "echo":
            await anyio.sleep(float(arguments.get("delay", 0)))
            text = str(arguments.get("text", ""))
        elif name == "counter_increment":
            self.sessions[session_id] += 1
            text = str(self.sessions[session_id])
        elif name == "counter_get":
            text = str(self.sessions[session_id])
        else:
            return _error(request_id, -32602, f"Unknown tool: {name}")
        result = {"content": [{"type": "text", "text": text}], "isError": False}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    error = {"code": code, "message": message}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}
