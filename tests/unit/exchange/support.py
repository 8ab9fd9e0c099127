"""Builders shared by the exchange unit tests: configs, ID-JAGs, a fixed upstream."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import anyio
import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.agents import AgentResolver
from gateway.config import (
    BackendConfig,
    BasicAuth,
    GatewayConfig,
    IdJagAuth,
    NoAuth,
    ServerConfig,
    StaticKeyAuth,
    UpstreamConfig,
)
from gateway.context import RequestContext
from gateway.events import GatewayEvent
from gateway.exchange.service import CredentialService
from gateway.facts import AgentIdentity, Principal
from gateway.mcp.jsonrpc import parse_message
from gateway.oauth.grants import Grant, GrantStore, UpstreamTokens
from gateway.runtime import Runtime
from gateway.sessions import SessionStore
from gateway.store import Store
from pipeline import EventBus

E = TypeVar("E", bound=GatewayEvent)

PUBLIC_URL = "http://127.0.0.1:8000"
IDP = "http://127.0.0.1:9"
IDP_TOKEN = f"{IDP}/oauth2/v1/token"
AS_ISSUER = f"{IDP}/oauth2/employees"
AS_TOKEN = f"{AS_ISSUER}/v1/token"
RESOURCE = "http://127.0.0.1:8001/mcp"

_KEY = ECKey.generate_key("P-256")

ALICE = Principal(iss=IDP, sub="00u_alice", client_id="client-1", grant_id="grant-1")
CURSOR = AgentIdentity(
    id="cursor", verified=False, trust="self-asserted", client_id="client-1"
)


def id_jag_auth(**overrides: Any) -> IdJagAuth:
    """Return the ``auth`` of an ID-JAG backend on the fixed test addresses."""
    values: dict[str, Any] = {
        "issuer": AS_ISSUER,
        "token_endpoint": AS_TOKEN,
        "resource": RESOURCE,
        "client_id": "agent-proxy-at-employees",
        "client_secret": "employees-dev-secret",
        "scopes": ["employees:read"],
    }
    values.update(overrides)
    return IdJagAuth(**values)


def gateway_config(**backends: BackendConfig) -> GatewayConfig:
    """Return a config with the given backends and the usual test backends."""
    defaults = {
        "employees": BackendConfig(
            path="/employees/mcp", url=RESOURCE, auth=id_jag_auth()
        ),
        "partners": BackendConfig(
            path="/partners/mcp",
            url="http://127.0.0.1:8002/mcp",
            auth=StaticKeyAuth(value="partners-key", header="X-Api-Key"),
        ),
        "bearer": BackendConfig(
            path="/bearer/mcp",
            url="http://127.0.0.1:8003/mcp",
            auth=StaticKeyAuth(
                value="s3cret", header="Authorization", prefix="Bearer "
            ),
        ),
        "legacy": BackendConfig(
            path="/legacy/mcp",
            url="http://127.0.0.1:8004/mcp",
            auth=BasicAuth(username="gateway", password="pässword"),
        ),
        "open": BackendConfig(
            path="/open/mcp", url="http://127.0.0.1:8005/mcp", auth=NoAuth()
        ),
    }
    defaults.update(backends)
    return GatewayConfig(
        server=ServerConfig(public_url=PUBLIC_URL),
        upstream=UpstreamConfig(
            issuer=IDP, client_id="agent-proxy", client_secret="agent-proxy-secret"
        ),
        backends=defaults,
    )


def make_id_jag(*, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """Return a signed ID-JAG; keyword claims replace the defaults, None drops one."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": IDP,
        "sub": "00u_alice",
        "aud": AS_ISSUER,
        "client_id": "agent-proxy-at-employees",
        "jti": "IDAAG.test",
        "iat": now,
        "exp": now + 300,
        "resource": RESOURCE,
    }
    values.update(claims)
    values = {key: value for key, value in values.items() if value is not None}
    protected = {"alg": "ES256", "typ": "oauth-id-jag+jwt", **(header or {})}
    return jwt.encode(protected, values, _KEY)


class FixedUpstream:
    """An upstream client with a fixed token endpoint and Basic authentication.

    The real ``UpstreamClient`` reads the endpoint from the IdP's discovery
    document; these unit tests have no IdP, so the endpoint is given.
    """

    def __init__(self, token_endpoint: str = IDP_TOKEN) -> None:
        self.endpoint = token_endpoint

    async def token_endpoint(self) -> str:
        return self.endpoint

    def client_auth(
        self, data: dict[str, str], *, token_endpoint: str | None = None
    ) -> tuple[dict[str, str], httpx.Auth | None]:
        form = {**data, "client_id": "agent-proxy"}
        return form, httpx.BasicAuth("agent-proxy", "agent-proxy-secret")


Handler = Callable[[httpx.Request], httpx.Response]


def token_exchange_ok(assertion: str | None = None, **fields: Any) -> httpx.Response:
    """Return a well-formed token exchange response."""
    body: dict[str, Any] = {
        "issued_token_type": "urn:ietf:params:oauth:token-type:id-jag",
        "access_token": assertion if assertion is not None else make_id_jag(),
        "token_type": "N_A",
        "expires_in": 300,
    }
    body.update(fields)
    return httpx.Response(200, json=body)


def jwt_bearer_ok(**fields: Any) -> httpx.Response:
    """Return a well-formed JWT-bearer grant response."""
    body: dict[str, Any] = {
        "access_token": "backend-token-1",
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "employees:read",
    }
    body.update(fields)
    return httpx.Response(200, json=body)


def build_runtime(
    config: GatewayConfig,
    *,
    credentials: CredentialService,
    grants: GrantStore,
    store: Store,
    bus: EventBus,
    upstream: Any = None,
) -> Runtime:
    """Return a runtime with the services the exchange stage uses.

    Signing keys are left out: the exchange stage never signs anything.
    """
    return Runtime(
        config=config,
        store=store,
        bus=bus,
        keys=cast(Any, None),
        grants=grants,
        upstream=cast(Any, upstream),
        sessions=SessionStore(store),
        credentials=credentials,
        agents=AgentResolver(config),
    )


def request_context(
    runtime: Runtime,
    backend: str,
    body: bytes | None = None,
    *,
    http_method: str = "POST",
) -> RequestContext:
    """Return the context of one request to ``backend``, as the HTTP layer builds it."""
    if body is None and http_method == "POST":
        body = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}'
    message = parse_message(body) if body else None
    return RequestContext(
        runtime=runtime,
        request_id="req-1",
        http_method=http_method,
        backend_name=backend,
        backend=runtime.config.backends[backend],
        resource=runtime.resource_for(backend),
        headers={},
        body=body or b"",
        message=message,
    )


class EventLog:
    """Collects the events published on a bus while the context is open."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.events: list[GatewayEvent] = []
        bus.subscribe("test", self._collect)

    async def _collect(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        """Return the collected events of one type, in order."""
        return [event for event in self.events if isinstance(event, kind)]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EventLog]:
        """Run the bus; on exit, deliver what was published and stop it."""
        async with anyio.create_task_group() as tg:
            self.bus.start(tg)
            try:
                yield self
            finally:
                await self.bus.aclose()


class NoRefresh:
    """An upstream refresher for grants whose ID token never needs refreshing."""

    async def refresh(self, refresh_token: str) -> UpstreamTokens:
        msg = "these tests never refresh an upstream ID token"
        raise AssertionError(msg)


def closed_port() -> int:
    """Return a loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def save_alice_grant(
    grants: GrantStore, *, id_token: str = "id-token-of-alice"
) -> None:
    """Store ALICE's grant holding ``id_token``, valid for an hour."""
    now = int(time.time())
    await grants.save(
        Grant(
            grant_id=ALICE.grant_id,
            user_iss=ALICE.iss,
            user_sub=ALICE.sub,
            client_id=ALICE.client_id,
            agent_id=CURSOR.id,
            resource=f"{PUBLIC_URL}/employees/mcp",
            upstream_id_token=id_token,
            id_token_expires_at=now + 3600,
            created_at=now,
            expires_at=now + 3600,
        )
    )
