"""Assembling a running gateway: services, chains, HTTP routes and subscribers."""

from __future__ import annotations

import time
import uuid
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
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from gateway.agents import AgentResolver
from gateway.audit.config import AuditConfig
from gateway.audit.subscribers import subscribe_audit_sinks
from gateway.chains import audit_settings_key, plan_backend_chains
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.exchange.service import CredentialService
from gateway.generation import build_generation, mirror
from gateway.mcp.endpoint import McpEndpoint
from gateway.mcp.headers import read_headers
from gateway.oauth.clients import ClientRegistry
from gateway.oauth.exception_handlers import oauth_exception_handlers
from gateway.oauth.grants import GrantStore
from gateway.oauth.key_rotation import maintain_signing_keys
from gateway.oauth.keys import KeySchedule, SigningKeys
from gateway.oauth.pre_registered import read_client_jwks
from gateway.oauth.ratelimit import OAuthRateLimiter, RateLimitMiddleware
from gateway.oauth.responses import NO_STORE
from gateway.oauth.routes import OAUTH_PATHS, create_oauth_handlers
from gateway.oauth.upstream_clients import UpstreamClients
from gateway.observability import Observability
from gateway.request_log import log_http_request
from gateway.runtime import Runtime, current_request_id
from gateway.sessions import SessionStore
from gateway.store import MemoryStore, Store
from gateway.telemetry import instrument_http_client
from gateway.tracing_attributes import REQUEST_ID
from pipeline import EventBus

log = structlog.get_logger("gateway")
_tracer = trace.get_tracer("gateway.http")
_FIXED_OAUTH_ROUTES = frozenset(path for path in OAUTH_PATHS if "{" not in path)

ASGIApp = Any


@dataclass
class Gateway:
    """A gateway ready to serve.

    Attributes:
        runtime: The runtime of the current config, which new requests get
            (see :mod:`gateway.generation`); a reload replaces it.
        asgi: The ASGI application: MCP endpoints first, then the Litestar app.
        warnings: Configuration warnings found at start-up.
        base: The runtime that owns the shared services, for long-lived tasks
            such as the admin API; its config follows the current one.
        observability: The metrics, readiness checks and ops endpoints.
    """

    runtime: Runtime
    asgi: ASGIApp
    warnings: list[str]
    base: Runtime
    observability: Observability

    def install(self, runtime: Runtime) -> None:
        """Serve new requests with ``runtime``; requests in flight keep theirs.

        Runs without awaiting, so every request gets the whole switch or none.
        """
        mirror(self.base, runtime)
        self.asgi.install(runtime)
        self.runtime = runtime


def var_path(config: GatewayConfig, relative: str) -> Path:
    """Resolve a path under ``server.var_dir`` (absolute paths stay as they are)."""
    path = Path(relative)
    return path if path.is_absolute() else Path(config.server.var_dir) / path


def audit_config(config: GatewayConfig) -> AuditConfig:
    """Return the audit settings, validated at chain planning.

    They sit under ``stages.audit`` or under one audit instance such as
    ``stages.audit/main``; chain planning rejects settings on two of them.
    """
    key = audit_settings_key(config)
    settings = config.stages.get(key) if key is not None else None
    return msgspec.convert(settings or {}, AuditConfig, strict=False)


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

    oauth_middleware = _oauth_middleware(config)
    store = store or MemoryStore()
    bus = EventBus()
    # One client for the IdP and authorization servers, with a client span
    # per call so that the ID-JAG exchange shows in the request's trace.
    http = instrument_http_client(
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
    )
    upstream_clients = UpstreamClients.from_config(config, http=http)
    upstream = upstream_clients.gateway
    grants = GrantStore(
        store, upstream_clients, recheck_after=config.upstream.recheck_after
    )
    key_path = var_path(config, config.signing.key_file)
    try:
        keys = SigningKeys.load_or_create(
            key_path,
            config.signing.algorithm,
            schedule=KeySchedule.from_config(config.signing),
        )
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
            config,
            grants=grants,
            upstream=upstream,
            upstream_clients=upstream_clients,
            http=http,
        ),
        agents=AgentResolver(config),
        upstream_clients=upstream_clients,
    )
    try:
        client_jwks = read_client_jwks(config.oauth.clients)
    except ValueError as exc:
        await http.aclose()
        raise ConfigError([str(exc)]) from exc
    await ClientRegistry(store).load_pre_registered(
        config.oauth.clients, jwks=client_jwks
    )
    try:
        # A custom stage's constructor may raise: that is a config error.
        generation = build_generation(runtime, config, plans)
    except ConfigError:
        await http.aclose()
        raise
    _subscribe(runtime, config)
    mirror(runtime, generation)

    oauth_app = Litestar(
        route_handlers=create_oauth_handlers(middleware=oauth_middleware),
        exception_handlers=oauth_exception_handlers(),
        state=State({"runtime": generation}),
        openapi_config=None,
        # Litestar's default logging config replaces the root logger's
        # handlers, which would bypass the redacting log set-up.
        logging_config=None,
        debug=False,
    )
    observability = Observability.build(runtime)
    asgi = _Dispatcher(McpEndpoint(generation), oauth_app, generation, observability)
    try:
        async with anyio.create_task_group() as tg:
            bus.start(tg)
            observability.start(tg)
            key_maintenance = await tg.start(maintain_signing_keys, runtime)
            log.info(
                "gateway.started",
                public_url=config.server.public_url,
                backends=sorted(runtime.backends),
            )
            try:
                yield Gateway(
                    runtime=generation,
                    asgi=asgi,
                    warnings=warnings,
                    base=runtime,
                    observability=observability,
                )
            finally:
                key_maintenance.cancel()
                with anyio.CancelScope(shield=True):
                    await bus.aclose()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for backend_runtime in runtime.backends.values():
                await backend_runtime.client.aclose()
            await runtime.credentials.aclose()
            await http.aclose()
            await observability.aclose()
        log.info("gateway.stopped")


def _oauth_middleware(config: GatewayConfig) -> list[RateLimitMiddleware]:
    """Return the rate limiter of the OAuth endpoints, or none when disabled.

    Raises:
        ConfigError: A ``trusted_proxies`` entry is not an address or network.
    """
    settings = config.oauth.rate_limits
    if not settings.enabled:
        return []
    try:
        limiter = OAuthRateLimiter(settings)
    except ValueError as exc:
        raise ConfigError([f"oauth.rate_limits.trusted_proxies: {exc}"]) from exc
    return [RateLimitMiddleware(limiter)]


def _subscribe(runtime: Runtime, config: GatewayConfig) -> None:
    subscribe_audit_sinks(
        runtime.bus, audit_config(config), Path(config.server.var_dir)
    )


class _Dispatcher:
    """Send MCP endpoint paths to the MCP endpoint, everything else to Litestar.

    Dispatching before Litestar's router keeps the hot path short and lets
    the MCP endpoint stream without any framework middleware in the way.
    The MCP endpoint traces its own requests. For every other HTTP request
    the dispatcher starts a SERVER span that continues the caller's W3C
    ``traceparent`` and records the response status on it. It also gives the
    request an id, which the response sends as ``X-Request-Id`` and which
    :data:`~gateway.runtime.current_request_id` contains for the events
    published meanwhile.
    """

    def __init__(
        self,
        mcp: McpEndpoint,
        app: Litestar,
        runtime: Runtime,
        observability: Observability,
    ) -> None:
        self.mcp = mcp
        self.app = app
        self.runtime = runtime
        self.ops = observability.ops

    def install(self, runtime: Runtime) -> None:
        """Send new requests to ``runtime``'s endpoints and OAuth state."""
        self.runtime = runtime
        self.mcp = McpEndpoint(runtime)
        self.app.state.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        # One read of the current endpoint: a reload replaces it, and the
        # request keeps this one, with its runtime, to its end.
        mcp = self.mcp
        by_path = mcp.runtime.by_path
        if path in by_path or path.rstrip("/") in by_path:
            active = mcp.runtime.active
            active.enter()
            try:
                await mcp(scope, receive, send)
            finally:
                active.leave()
            return
        if path in self.ops.paths:
            await self.ops(scope, receive, send)
            return
        await self._serve_app(scope, receive, send)

    async def _serve_app(self, scope: Any, receive: Any, send: Any) -> None:
        method = scope["method"]
        path = scope["path"]
        headers, _ = read_headers(scope["headers"])
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        # The name is the method alone until the route is known. Naming spans
        # after raw paths would create one span name per path that a scanner
        # tries, which the OpenTelemetry HTTP semantic conventions advise
        # against.
        span = _tracer.start_span(
            method,
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                REQUEST_ID: request_id,
            },
        )
        status: int | None = None

        async def send_with_request_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            await send(message)

        request_id_token = current_request_id.set(request_id)
        try:
            with trace.use_span(span, end_on_exit=False):
                try:
                    await self.app(scope, receive, send_with_request_id)
                except Exception as exc:
                    # Litestar's exception handlers turn every error of a route
                    # into a response, so this exception comes from a failing
                    # exception handler or from an error after the response
                    # started.
                    span.record_exception(exc)
                    log.exception(
                        "http.unhandled_error",
                        method=method,
                        path=path[:200],
                        request_id=request_id,
                    )
                    if status is None:
                        await _send_server_error(send_with_request_id, request_id)
        finally:
            current_request_id.reset(request_id_token)
            # Litestar sets the template of the route it matched. A known path
            # with a method it does not serve (405) matched no route.
            route = scope.get("path_template") or (
                path if path in _FIXED_OAUTH_ROUTES else None
            )
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
            span.end()
            log_http_request(
                request_id=request_id,
                http_method=method,
                route=route,
                status=status,
                started=started,
                span_context=span.get_span_context(),
            )


async def _send_server_error(send: Any, request_id: str) -> None:
    """Send an RFC 6749 ``server_error`` when no response was started."""
    body = msgspec.json.encode(
        {
            "error": "server_error",
            "error_description": "the gateway failed to handle the request; its "
            f"log has the details under request id {request_id}",
        }
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in NO_STORE.items()),
    ]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
