"""Shared pieces of the pre-registered client and per-agent upstream tests.

The stack is the demo (dev IdP, employees and partners backends, gateway) on
ephemeral loopback ports, with the demo config optionally changed first. The
demo config pre-registers ``cursor-desktop``, a confidential client that
makes ``cursor`` a verified agent, and gives ``cursor`` its own client at the
dev IdP, ``cursor-agent``, mapped to ``cursor-at-employees`` at the employees
authorization server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec

from gateway.app import open_gateway
from gateway.config import GatewayConfig
from gateway.demo.driver import REDIRECT_URI, BrowserDriver
from gateway.demo.runner import DEMO_PORTS, DemoStack, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app
from gateway.oauth import pkce
from gateway.oauth.grants import Grant

VERIFIED_CLIENT = "cursor-desktop"
VERIFIED_SECRET = "cursor-desktop-dev-secret-not-for-production"
AGENT_UPSTREAM_CLIENT = "cursor-agent"
AGENT_EMPLOYEES_CLIENT = "cursor-at-employees"
GATEWAY_UPSTREAM_CLIENT = "agent-proxy"
GATEWAY_EMPLOYEES_CLIENT = "agent-proxy-at-employees"

ConfigEdit = Callable[[GatewayConfig], GatewayConfig]


@asynccontextmanager
async def identity_stack(
    var_dir: Path, edit: ConfigEdit | None = None
) -> AsyncIterator[DemoStack]:
    """Run the demo stack, with ``edit`` applied to the demo config first.

    The OAuth rate limits are off, because the tests sign in more often than
    the limits allow one address.
    """
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    limits = msgspec.structs.replace(config.oauth.rate_limits, enabled=False)
    config = msgspec.structs.replace(
        config, oauth=msgspec.structs.replace(config.oauth, rate_limits=limits)
    )
    if edit is not None:
        config = edit(config)
    apps = demo_peer_apps(config, urls)
    async with AsyncExitStack() as stack:
        for name in ("idp", "employees", "partners"):
            await stack.enter_async_context(run_app(apps[name], sock=sockets[name]))
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(
            run_app(gateway.asgi, sock=sockets["gateway"], header_timeout=10.0)
        )
        yield DemoStack(gateway, config, urls, var_dir / "audit.jsonl")


def with_oauth_clients(config: GatewayConfig, clients: dict[str, Any]) -> GatewayConfig:
    """Return ``config`` with more ``oauth.clients``, decoded as the loader does."""
    merged = {
        **msgspec.to_builtins(config.oauth.clients),
        **clients,
    }
    oauth = msgspec.convert(
        {**msgspec.to_builtins(config.oauth), "clients": merged},
        type(config.oauth),
    )
    return msgspec.structs.replace(config, oauth=oauth)


def with_cursor_client_ids(
    config: GatewayConfig, client_ids: list[str]
) -> GatewayConfig:
    """Return ``config`` where ``agents.cursor.match.client_ids`` is ``client_ids``."""
    cursor = config.agents["cursor"]
    match = msgspec.structs.replace(cursor.match, client_ids=client_ids)
    agents = {**config.agents, "cursor": msgspec.structs.replace(cursor, match=match)}
    return msgspec.structs.replace(config, agents=agents)


@dataclass
class Authorization:
    """A gateway authorization code and the PKCE verifier that redeems it."""

    code: str
    verifier: str


async def authorize(
    stack: DemoStack, client_id: str, *, login_hint: str = "alice"
) -> Authorization:
    """Sign ``login_hint`` in for ``client_id`` as a browser would; return the code.

    The browser approves the consent page and follows the redirects through
    the dev IdP to the client's loopback redirect URI.
    """
    verifier = pkce.new_code_verifier()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": "s-" + verifier[:8],
            "code_challenge": pkce.s256_challenge(verifier),
            "code_challenge_method": "S256",
            "resource": stack.mcp_url("employees"),
        }
    )
    browser = BrowserDriver(login_hint=login_hint)
    await browser.redirect_handler(f"{stack.urls['gateway']}/oauth2/authorize?{query}")
    result = await browser.callback_handler()
    return Authorization(code=result.code, verifier=verifier)


async def redeem(
    stack: DemoStack,
    authorization: Authorization,
    client_id: str,
    *,
    secret: str | None = None,
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    """Send the ``authorization_code`` token request, with Basic when ``secret``."""
    form = {
        "grant_type": "authorization_code",
        "code": authorization.code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": authorization.verifier,
        "resource": stack.mcp_url("employees"),
        **(extra or {}),
    }
    if secret is None:
        form.setdefault("client_id", client_id)
    async with httpx.AsyncClient(timeout=10.0) as http:
        return await http.post(
            stack.urls["gateway"] + "/oauth2/token",
            data=form,
            auth=httpx.BasicAuth(client_id, secret) if secret is not None else None,
        )


def jwt_claims(token: str) -> dict[str, Any]:
    """Return a JWT's claims without verifying it (the issuer's tests verify)."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


async def grant_of(stack: DemoStack, access_token: str) -> Grant:
    """Return the grant behind a gateway access token."""
    grant = await stack.gateway.runtime.grants.get(jwt_claims(access_token)["grant_id"])
    assert grant is not None
    return grant


def idp_token_events(logs: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """Return the dev IdP's ``devidp.token_issued`` log entries matching ``fields``."""
    return [
        entry
        for entry in logs
        if entry.get("event") == "devidp.token_issued"
        and all(entry.get(name) == value for name, value in fields.items())
    ]
