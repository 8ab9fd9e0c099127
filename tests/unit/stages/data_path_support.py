"""Support for the session and forward stage tests.

:class:`ScriptedBackend` is an ASGI app on loopback that responds to each
request with the reply a test queued. It is used for backend behaviour that an
official-SDK server cannot be made to produce on request (HTML error pages,
non-JSON-RPC bodies, 202 to a request, resets in the middle of a stream);
the integration tests run the same stages against a real SDK server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from gateway.agents import AgentResolver
from gateway.config import BackendConfig, GatewayConfig, ServerConfig, UpstreamConfig
from gateway.context import RequestContext
from gateway.demo.serve import run_app
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
from gateway.mcp.jsonrpc import parse_message
from gateway.mcp.response import GatewayResponse
from gateway.runtime import BackendRuntime, Runtime
from gateway.sessions import SessionStore
from gateway.store import MemoryStore
from pipeline import Chain, Event, EventBus

Send = Callable[[dict[str, Any]], Awaitable[None]]
Reply = Callable[[Any, Any, Send], Awaitable[None]]

BACKEND = "employees"
API_KEY = "backend-api-key"


@dataclass
class Received:
    """One request as the scripted backend received it."""

    method: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedBackend:
    """Responds with the queued replies in order, then with ``default``."""

    replies: list[Reply] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    default: Reply | None = None

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["method"], headers, body))
        reply = self.replies.pop(0) if self.replies else self.default
        if reply is None:
            reply = json_reply(500, b"no reply queued")
        await reply(scope, receive, send)


def json_reply(
    status: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> Reply:
    """Reply with a complete body, ``application/json`` unless ``headers`` differ."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"content-type": "application/json", **(headers or {})}

    async def reply(_scope: Any, _receive: Any, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return reply


def sse_reply(
    events: list[bytes],
    *,
    headers: dict[str, str] | None = None,
    gate: anyio.Event | None = None,
    fail_after: bool = False,
) -> Reply:
    """Reply with an event stream, waiting for ``gate`` after the first event.

    With ``fail_after`` the app raises after the events, so that the server
    drops the connection in the middle of the chunked body.
    """
    all_headers = {"content-type": "text/event-stream", **(headers or {})}

    async def reply(_scope: Any, _receive: Any, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
            }
        )
        for index, event in enumerate(events):
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if index == 0 and gate is not None:
                with anyio.fail_after(5):
                    await gate.wait()
        if fail_after:
            msg = "scripted failure in the middle of the stream"
            raise RuntimeError(msg)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return reply


def slow_reply(delay: float) -> Reply:
    """Wait ``delay`` seconds, then reply with an empty JSON-RPC result."""

    async def reply(scope: Any, receive: Any, send: Send) -> None:
        await anyio.sleep(delay)
        await json_reply(200, {"jsonrpc": "2.0", "id": 1, "result": {}})(
            scope, receive, send
        )

    return reply


@dataclass
class DataPath:
    """A runtime whose one backend is served by a scripted app."""

    runtime: Runtime
    backend: ScriptedBackend
    events: list[Event]

    async def settle(self) -> list[Event]:
        """Wait for the bus to deliver, then return every event so far."""
        await self.runtime.bus.drain(timeout=2.0)
        await anyio.sleep(0.01)
        return self.events


@contextlib.asynccontextmanager
async def data_path(
    backend: ScriptedBackend | None = None,
    *,
    url: str | None = None,
    timeout: float = 5.0,
) -> AsyncIterator[DataPath]:
    """Run ``backend`` on loopback (or use ``url``) and build a runtime for it."""
    backend = backend or ScriptedBackend()
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            running = await stack.enter_async_context(run_app(backend))
            url = f"{running.url}/mcp"
        config = GatewayConfig(
            server=ServerConfig(public_url="http://127.0.0.1:8000"),
            upstream=UpstreamConfig(issuer="http://127.0.0.1:9", client_id="unused"),
            backends={
                BACKEND: BackendConfig(path="/employees/mcp", url=url, timeout=timeout)
            },
        )
        store = MemoryStore()
        bus = EventBus()
        events: list[Event] = []

        async def collect(event: Event) -> None:
            events.append(event)

        bus.subscribe("test-collector", collect)
        # These stages use neither keys, grants, the IdP nor the credential
        # service, so None is passed for them.
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
        client = BackendClient(config.backends[BACKEND])
        stack.push_async_callback(client.aclose)
        runtime.backends[BACKEND] = BackendRuntime(
            name=BACKEND,
            config=config.backends[BACKEND],
            resource="http://127.0.0.1:8000/employees/mcp",
            chain=Chain([]),
            client=client,
        )
        task_group = await stack.enter_async_context(anyio.create_task_group())
        bus.start(task_group)
        stack.callback(task_group.cancel_scope.cancel)
        yield DataPath(runtime, backend, events)


def make_context(
    runtime: Runtime,
    *,
    method: str = "POST",
    message: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
    user: str = "alice",
    agent: str = "cursor",
) -> RequestContext:
    """Build a request context with the facts the security stages would provide."""
    body = b""
    if message is not None:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
    ctx = RequestContext(
        runtime=runtime,
        request_id="req-1",
        http_method=method,
        backend_name=BACKEND,
        backend=runtime.config.backends[BACKEND],
        resource="http://127.0.0.1:8000/employees/mcp",
        headers=headers or {},
        body=body,
        message=parse_message(body) if body else None,
    )
    ctx.provide(
        PRINCIPAL,
        Principal(iss="https://idp.test", sub=user, client_id="c", grant_id="g"),
    )
    ctx.provide(
        AGENT, AgentIdentity(id=agent, verified=True, trust="verified", client_id="c")
    )
    ctx.provide(DECISION, Decision(allowed=True, backend=BACKEND))
    ctx.provide(
        BACKEND_CREDENTIALS,
        BackendCredentials(headers={"X-Api-Key": API_KEY}, kind="static-key"),
    )
    return ctx


async def body_of(response: GatewayResponse) -> bytes:
    """Return the whole body of a response, reading its stream if it has one."""
    if response.stream is None:
        return response.body
    return b"".join([chunk async for chunk in response.stream])
