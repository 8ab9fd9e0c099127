"""The credential service wired to the dev IdP, shared by the exchange tests.

Exchanges go over loopback HTTP to the dev IdP's org server and its
``employees`` authorization server, with real ID tokens from the
authorization code flow, real signatures and the gateway's real upstream
client. POST requests are counted with an httpx event hook on the shared
client.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from _devidp_fixtures import (
    GATEWAY_CALLBACK,
    POST_CLIENT,
    POST_CLIENT_CALLBACK,
    DevIdpHarness,
    decode_unverified,
)

from gateway.config import (
    BackendConfig,
    GatewayConfig,
    IdJagAuth,
    ServerConfig,
    UpstreamConfig,
)
from gateway.exchange.service import CredentialService
from gateway.facts import AgentIdentity, Principal
from gateway.oauth.grants import Grant, GrantStore
from gateway.oauth.upstream import UpstreamClient
from gateway.store import MemoryStore

CURSOR = AgentIdentity(
    id="cursor", verified=False, trust="self-asserted", client_id="client-1"
)
CLAUDE = AgentIdentity(
    id="claude-code", verified=False, trust="self-asserted", client_id="client-2"
)


class MonotonicClock:
    """``time.monotonic`` plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@dataclass
class Setup:
    """A credential service wired to the dev IdP, with its traffic counted."""

    devidp: DevIdpHarness
    config: GatewayConfig
    service: CredentialService
    grants: GrantStore
    upstream: UpstreamClient
    clock: MonotonicClock
    posts: list[str] = field(default_factory=list)
    post_delay: float = 0.0
    """Seconds each POST waits before it is sent, to hold an exchange open."""

    def count(self, path: str) -> int:
        return sum(1 for url in self.posts if url.endswith(path))

    async def sign_in(
        self, login_hint: str = "alice", *, grant_id: str = "grant-1"
    ) -> Principal:
        """Sign a user in at the dev IdP and keep the tokens in a grant."""
        tokens = await self.devidp.sign_in(login_hint)
        return await self.keep(tokens["id_token"], grant_id=grant_id)

    async def keep(self, id_token: str, *, grant_id: str) -> Principal:
        _, claims = decode_unverified(id_token)
        now = int(time.time())
        await self.grants.save(
            Grant(
                grant_id=grant_id,
                user_iss=claims["iss"],
                user_sub=claims["sub"],
                client_id="client-1",
                agent_id="cursor",
                resource="http://127.0.0.1:8000/employees/mcp",
                upstream_id_token=id_token,
                id_token_expires_at=claims["exp"],
                created_at=now,
                expires_at=now + 3600,
            )
        )
        return Principal(
            iss=claims["iss"],
            sub=claims["sub"],
            client_id="client-1",
            grant_id=grant_id,
        )


def employees_auth(devidp: DevIdpHarness, **overrides: Any) -> IdJagAuth:
    values: dict[str, Any] = {
        "issuer": devidp.employees_issuer,
        "token_endpoint": f"{devidp.employees_issuer}/v1/token",
        "resource": devidp.employees_resource,
        "client_id": "agent-proxy-at-employees",
        "client_secret": "employees-dev-secret",
        "scopes": ["employees:read", "employees:write"],
    }
    values.update(overrides)
    return IdJagAuth(**values)


def gateway_config(
    devidp: DevIdpHarness,
    *,
    auth: IdJagAuth | None = None,
    upstream: UpstreamConfig | None = None,
) -> GatewayConfig:
    return GatewayConfig(
        server=ServerConfig(public_url="http://127.0.0.1:8000"),
        upstream=upstream
        or UpstreamConfig(
            issuer=devidp.issuer,
            client_id="agent-proxy",
            client_secret="agent-proxy-dev-secret",
        ),
        backends={
            "employees": BackendConfig(
                path="/employees/mcp",
                url=devidp.employees_resource,
                auth=auth or employees_auth(devidp),
            )
        },
    )


@contextlib.asynccontextmanager
async def open_setup(
    devidp: DevIdpHarness,
    *,
    auth: IdJagAuth | None = None,
    upstream: UpstreamConfig | None = None,
) -> AsyncIterator[Setup]:
    """Build the gateway's upstream client, grants and credential service."""
    config = gateway_config(devidp, auth=auth, upstream=upstream)
    posts: list[str] = []
    setup: Setup | None = None

    async def record(request: httpx.Request) -> None:
        if request.method == "POST":
            posts.append(str(request.url))
            if setup is not None and setup.post_delay:
                await anyio.sleep(setup.post_delay)

    clock = MonotonicClock()
    async with httpx.AsyncClient(
        timeout=5.0, event_hooks={"request": [record]}
    ) as http:
        client = UpstreamClient(
            config.upstream, redirect_uri=GATEWAY_CALLBACK, http=http
        )
        grants = GrantStore(MemoryStore(), client)
        service = CredentialService(
            config, grants=grants, upstream=client, http=http, clock=clock
        )
        setup = Setup(devidp, config, service, grants, client, clock, posts)
        yield setup
        await service.aclose()


async def other_client_id_token(devidp: DevIdpHarness) -> str:
    """Sign Alice in with the ``cursor-app`` client and return its ID token."""
    code, verifier = await devidp.code_for(
        client_id=POST_CLIENT[0], redirect_uri=POST_CLIENT_CALLBACK
    )
    response = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": POST_CLIENT_CALLBACK,
            "code_verifier": verifier,
            "client_id": POST_CLIENT[0],
            "client_secret": POST_CLIENT[1],
        },
        auth=None,
    )
    assert response.status_code == 200, response.text
    id_token: str = response.json()["id_token"]
    return id_token
