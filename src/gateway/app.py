"""Assembling a running gateway: services, chains, HTTP routes and subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import structlog
from litestar import Litestar
from litestar.datastructures import State

from gateway.agents import AgentResolver
from gateway.audit.config import AuditConfig, JsonlSinkConfig, StdoutSinkConfig
from gateway.audit.sinks import JsonlSink, StdoutSink
from gateway.chains import instantiate, plan_backend_chains
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.events import ResponseCompleted
from gateway.exchange.service import CredentialService
from gateway.mcp.backend import BackendClient
from gateway.mcp.endpoint import McpEndpoint
from gateway.oauth.grants import GrantStore
from gateway.oauth.keys import SigningKeys
from gateway.oauth.routes import create_oauth_handlers
from gateway.oauth.upstream import UpstreamClient
from gateway.runtime import BackendRuntime, Runtime
from gateway.sessions import SessionStore
from gateway.store import MemoryStore, Store
from pipeline import Event, EventBus, Journal

log = structlog.get_logger("gateway")

ASGIApp = Any


@dataclass
class Gateway:
    """A gateway ready to serve.

    Attributes:
        runtime: The shared services.
        asgi: The ASGI application: MCP endpoints first, then the Litestar app.
        warnings: Configuration warnings found at start-up.
    """

    runtime: Runtime
    asgi: ASGIApp
    warnings: list[str]


def var_path(config: GatewayConfig, relative: str) -> Path:
    """Resolve a path under ``server.var_dir`` (absolute paths stay as they are)."""
    path = Path(relative)
    return path if path.is_absolute() else Path(config.server.var_dir) / path


def audit_config(config: GatewayConfig) -> AuditConfig:
    """Return the audit settings (``stages.audit``), validated at chain planning."""
    return msgspec.convert(config.stages.get("audit") or {}, AuditConfig)


@asynccontextmanager
async def open_gateway(
    config: GatewayConfig, *, store: Store | None = None
) -> AsyncIterator[Gateway]:
    """Build every service of a gateway, run its background tasks, and clean up.

    Raises:
        ConfigError: The chains are invalid (every problem listed).
    """
    plans, warnings = plan_backend_chains(config)
    for warning in warnings:
        log.warning("config.warning", detail=warning)

    store = store or MemoryStore()
    bus = EventBus()
    http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
    upstream = UpstreamClient(
        config.upstream,
        redirect_uri=config.server.public_url + "/oauth2/callback",
        http=http,
    )
    grants = GrantStore(store, upstream)
    key_path = var_path(config, config.signing.key_file)
    try:
        keys = SigningKeys.load_or_create(key_path, config.signing.algorithm)
    except (ValueError, OSError) as exc:
        await http.aclose()
        raise ConfigError([f"signing.key_file: cannot use {key_path}: {exc}"]) from exc
    runtime = Runtime(
        config=config,
        store=store,
        bus=bus,
        keys=keys,
        grants=grants,
        upstream=upstream,
        sessions=SessionStore(store),
        credentials=CredentialService(
            config, grants=grants, upstream=upstream, http=http
        ),
        agents=AgentResolver(config),
    )
    _subscribe(runtime, config)
    for name, plan in plans.items():
        backend = config.backends[name]
        runtime.backends[name] = BackendRuntime(
            name=name,
            config=backend,
            resource=runtime.resource_for(name),
            chain=instantiate(plan, runtime),
            client=BackendClient(backend),
        )
        runtime.by_path[backend.path] = name

    oauth_app = Litestar(
        route_handlers=create_oauth_handlers(),
        state=State({"runtime": runtime}),
        openapi_config=None,
        debug=False,
    )
    asgi = _Dispatcher(McpEndpoint(runtime), oauth_app, runtime)
    try:
        async with anyio.create_task_group() as tg:
            bus.start(tg)
            log.info(
                "gateway.started",
                public_url=config.server.public_url,
                backends=sorted(runtime.backends),
            )
            try:
                yield Gateway(runtime=runtime, asgi=asgi, warnings=warnings)
            finally:
                with anyio.CancelScope(shield=True):
                    await bus.aclose()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for backend_runtime in runtime.backends.values():
                await backend_runtime.client.aclose()
            await runtime.credentials.aclose()
            await http.aclose()
        log.info("gateway.stopped")


def _subscribe(runtime: Runtime, config: GatewayConfig) -> None:
    settings = audit_config(config)
    for index, sink_config in enumerate(settings.sinks):
        name = f"audit.{sink_config.__struct_config__.tag}.{index}"
        journal = Journal(
            var_path(config, settings.journal_dir) / f"{name}.journal",
            max_pending=settings.journal_max_pending,
            fsync=settings.journal_fsync,
        )
        sink: Any
        if isinstance(sink_config, JsonlSinkConfig):
            sink = JsonlSink(
                var_path(config, sink_config.path), fsync=sink_config.fsync
            )
        elif isinstance(sink_config, StdoutSinkConfig):
            sink = StdoutSink()
        runtime.bus.subscribe_durable(name, sink, journal)
    runtime.bus.subscribe("log.requests", _log_request)


async def _log_request(event: Event) -> None:
    # One canonical line per request, from the event the audit stage publishes.
    if not isinstance(event, ResponseCompleted):
        return
    log.info(
        "request.completed",
        request_id=event.request_id,
        trace_id=event.trace_id,
        span_id=event.span_id,
        backend=event.backend,
        method=event.method,
        tool=event.tool,
        agent_id=event.agent.id if event.agent else None,
        status=event.status,
        outcome=event.outcome,
        reason=event.reason,
        duration_ms=event.duration_ms,
    )


class _Dispatcher:
    """Send MCP endpoint paths to the MCP endpoint, everything else to Litestar.

    Dispatching before Litestar's router keeps the hot path short and lets
    the MCP endpoint stream without any framework middleware in the way.
    """

    def __init__(self, mcp: McpEndpoint, app: Litestar, runtime: Runtime) -> None:
        self.mcp = mcp
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path in self.runtime.by_path or path.rstrip("/") in self.runtime.by_path:
                await self.mcp(scope, receive, send)
                return
        await self.app(scope, receive, send)
