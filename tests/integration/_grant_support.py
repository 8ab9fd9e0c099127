"""Helpers of the grant lifetime tests: the demo stack with a dev IdP to steer.

Every server is real and runs with uvicorn on an ephemeral loopback port: the
dev IdP, both demo backends and the gateway. Tests reach the dev IdP's org
server (``OrgAuthorizationServer``) to end a user's sessions or switch an
outage on. Sign-ins go through the gateway's front door with the browser-like
client of the OAuth flow tests.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import yaml
from _transport_harness import MCP_HEADERS, initialize_body
from tests.integration.test_oauth_flow import CLIENT_CALLBACK
from tests.integration.test_oauth_flow import Gateway as FrontDoor

from gateway.app import Gateway, open_gateway
from gateway.config import GatewayConfig, IdJagAuth, StaticKeyAuth
from gateway.demo.backends.employees import create_employees_app
from gateway.demo.backends.partners import create_partners_app
from gateway.demo.runner import DEMO_PORTS, demo_config
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import create_devidp_app, demo_settings
from gateway.devidp.org import OrgAuthorizationServer
from gateway.events import GatewayEvent
from gateway.runtime import Runtime
from pipeline import Event

__all__ = [
    "FrontDoor",
    "GrantStack",
    "bind_sockets",
    "grant_stack",
    "initialize",
    "running_peers",
    "sign_in",
    "stack_config",
    "urls_of",
    "write_config",
]


def bind_sockets() -> dict[str, socket.socket]:
    """Bind an ephemeral loopback socket for each demo component."""
    return {name: bind_socket() for name in DEMO_PORTS}


def urls_of(sockets: dict[str, socket.socket]) -> dict[str, str]:
    """Return the base URL of each bound socket."""
    return {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }


def stack_config(
    urls: dict[str, str], var_dir: Path, **upstream_changes: Any
) -> GatewayConfig:
    """Return the demo config at ``urls``, with changes to its ``upstream``."""
    config = demo_config(urls, var_dir)
    upstream = msgspec.structs.replace(config.upstream, **upstream_changes)
    return msgspec.structs.replace(config, upstream=upstream)


def write_config(config: GatewayConfig, path: Path) -> Path:
    """Write a config as YAML for ``agent-proxy run``; return the path."""
    path.write_text(yaml.safe_dump(msgspec.to_builtins(config)), encoding="utf-8")
    return path


@asynccontextmanager
async def running_peers(
    sockets: dict[str, socket.socket],
    urls: dict[str, str],
    config: GatewayConfig,
    *,
    id_token_ttl: int | None = None,
) -> AsyncIterator[OrgAuthorizationServer]:
    """Serve the dev IdP and both demo backends that ``config`` points at.

    Yields the dev IdP's org server. ``sockets`` needs no gateway socket.
    """
    employees_auth = config.backends["employees"].auth
    partners_auth = config.backends["partners"].auth
    assert isinstance(employees_auth, IdJagAuth)
    assert isinstance(partners_auth, StaticKeyAuth)
    settings = demo_settings(
        issuer=urls["idp"],
        gateway_url=urls["gateway"],
        employees_resource=employees_auth.resource,
    )
    if id_token_ttl is not None:
        settings = msgspec.structs.replace(settings, id_token_ttl=id_token_ttl)
    idp = create_devidp_app(settings)
    employees = create_employees_app(
        resource=employees_auth.resource,
        authorization_server=employees_auth.issuer,
        jwks_url=employees_auth.issuer + "/v1/keys",
    )
    partners = create_partners_app(
        api_key=partners_auth.value, header=partners_auth.header
    )
    async with (
        run_app(idp, sock=sockets["idp"]),
        run_app(employees, sock=sockets["employees"]),
        run_app(partners, sock=sockets["partners"]),
    ):
        yield idp.state.org


@dataclass
class GrantStack:
    """A running gateway with its dev IdP, backends and a browser-like client.

    Attributes:
        gateway: The gateway, served in this process.
        org: The dev IdP's org server.
        front: The browser-like client of the gateway's front door.
        events: Every event the gateway published.
    """

    gateway: Gateway
    org: OrgAuthorizationServer
    front: FrontDoor
    events: list[Event] = field(default_factory=list)

    @property
    def runtime(self) -> Runtime:
        return self.gateway.runtime

    async def events_of(self, kind: type[GatewayEvent]) -> list[Any]:
        """Return the events of one type, once the bus has delivered them."""
        await anyio.sleep(0.05)
        return [event for event in self.events if isinstance(event, kind)]


@asynccontextmanager
async def grant_stack(
    var_dir: Path, *, id_token_ttl: int | None = None, **upstream_changes: Any
) -> AsyncIterator[GrantStack]:
    """Run the demo stack with the gateway in this process.

    Args:
        var_dir: The gateway's ``server.var_dir``.
        id_token_ttl: Lifetime of the dev IdP's ID tokens, when not the default.
        upstream_changes: Values of the gateway's ``upstream`` config to change.
    """
    sockets = bind_sockets()
    urls = urls_of(sockets)
    config = stack_config(urls, var_dir, **upstream_changes)
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    async with (
        running_peers(sockets, urls, config, id_token_ttl=id_token_ttl) as org,
        open_gateway(config) as gateway,
    ):
        gateway.runtime.bus.subscribe("test", record)
        async with (
            run_app(gateway.asgi, sock=sockets["gateway"]),
            httpx.AsyncClient(base_url=urls["gateway"], timeout=10.0) as browser,
        ):
            front = FrontDoor(urls["gateway"], urls["idp"], gateway.runtime, browser)
            yield GrantStack(gateway, org, front, events)


async def sign_in(
    front: FrontDoor,
    *,
    client_name: str = "cursor",
    user: str = "alice",
    backend: str = "employees",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register a client and sign a user in for one backend.

    Returns:
        The registered client and the gateway's token response.
    """
    client = await front.register(client_name)
    resource = front.resource(backend)
    result = await front.sign_in(client, login_hint=user, resource=resource)
    response = await front.token(
        {
            "grant_type": "authorization_code",
            "code": result.code,
            "redirect_uri": CLIENT_CALLBACK,
            "client_id": client["client_id"],
            "code_verifier": result.verifier,
            "resource": resource,
        }
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return client, tokens


async def initialize(
    front: FrontDoor, access_token: str, backend: str = "employees"
) -> httpx.Response:
    """Send ``initialize`` to a backend's MCP endpoint with an access token."""
    return await front.browser.post(
        f"/{backend}/mcp",
        json=initialize_body(),
        headers={**MCP_HEADERS, "authorization": f"Bearer {access_token}"},
    )
