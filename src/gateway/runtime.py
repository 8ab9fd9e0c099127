"""The gateway's shared services, handed to every stage as ``resources``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline import Chain, EventBus, current_ids

if TYPE_CHECKING:
    from gateway.agents import AgentResolver
    from gateway.config import BackendConfig, GatewayConfig
    from gateway.events import GatewayEvent
    from gateway.exchange.service import CredentialService
    from gateway.mcp.backend import BackendClient
    from gateway.oauth.grants import GrantStore
    from gateway.oauth.keys import SigningKeys
    from gateway.oauth.upstream import UpstreamClient
    from gateway.oauth.upstream_clients import UpstreamClients
    from gateway.sessions import SessionStore
    from gateway.store import Store


current_request_id: ContextVar[str | None] = ContextVar(
    "gateway_request_id", default=None
)
"""The id of the HTTP request being served outside the MCP endpoint, if any.

The dispatcher in front of the Litestar app sets it for each request, so that
events published by the OAuth endpoints carry the id that the response sends
as ``X-Request-Id``.
"""


class ActiveRequests:
    """A count of the requests in flight on one runtime, awaitable until zero.

    A reload waits on the count of the runtime it replaced before it closes
    the HTTP clients that only that runtime used.
    """

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: anyio.Event | None = None

    def enter(self) -> None:
        """Count a request that starts."""
        self.count += 1

    def leave(self) -> None:
        """Count a request that ended, and wake the waiters at zero."""
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.count:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()


@dataclass
class BackendRuntime:
    """Everything the gateway needs at run time for one backend.

    Attributes:
        name: The backend's name in config.
        config: Its config.
        resource: Its canonical resource URL at the gateway (``public_url + path``).
        chain: The chain that serves its MCP endpoint.
        client: The pooled HTTP client for the forward hop.
    """

    name: str
    config: BackendConfig
    resource: str
    chain: Chain[Any, Any]
    client: BackendClient


@dataclass
class Runtime:
    """Shared services; one instance per running gateway.

    Attributes:
        config: The loaded configuration.
        store: Gateway state (grants, sessions, codes, caches).
        bus: The event bus; publish through :meth:`publish`.
        keys: The gateway's token signing keys.
        grants: Server-side grants with the users' upstream tokens.
        upstream: The OIDC client of the upstream IdP.
        sessions: Gateway-to-backend MCP session mappings.
        credentials: Backend credentials (static, basic, ID-JAG with cache).
        agents: Maps OAuth clients to configured agents.
        backends: Per-backend runtime, by name.
        by_path: Backend name by gateway path.
        upstream_clients: ``upstream`` and every agent's own client at the
            IdP; None when the runtime has ``upstream`` only.
        active: The MCP requests in flight on this runtime.

    A config reload builds a new runtime that shares the services and has its
    own ``config``, ``agents``, ``credentials`` view, ``backends`` and
    ``by_path`` (see :mod:`gateway.generation`). A request keeps the runtime
    it started on, so stages read config through ``ctx.runtime``.
    """

    config: GatewayConfig
    store: Store
    bus: EventBus
    keys: SigningKeys
    grants: GrantStore
    upstream: UpstreamClient
    sessions: SessionStore
    credentials: CredentialService
    agents: AgentResolver
    backends: dict[str, BackendRuntime] = field(default_factory=dict)
    by_path: dict[str, str] = field(default_factory=dict)
    upstream_clients: UpstreamClients | None = None
    active: ActiveRequests = field(default_factory=ActiveRequests, repr=False)

    @property
    def issuer(self) -> str:
        """The gateway's issuer: ``server.public_url``."""
        return self.config.server.public_url

    def resource_for(self, backend_name: str) -> str:
        """Return a backend's canonical resource URL at the gateway."""
        return self.config.server.public_url + self.config.backends[backend_name].path

    async def publish(self, event: GatewayEvent) -> None:
        """Publish an event, filling in the ids of the current request.

        ``trace_id`` and ``span_id`` come from the current span, and
        ``request_id`` from :data:`current_request_id`; ids the event already
        has are kept.
        """
        changes: dict[str, str] = {}
        if event.trace_id is None:
            trace_id, span_id = current_ids()
            if trace_id is not None and span_id is not None:
                changes["trace_id"] = trace_id
                changes["span_id"] = span_id
        if event.request_id is None:
            request_id = current_request_id.get()
            if request_id is not None:
                changes["request_id"] = request_id
        if changes:
            event = msgspec.structs.replace(event, **changes)
        await self.bus.publish(event)
