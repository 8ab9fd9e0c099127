"""Per-tool scopes and the ``insufficient_scope`` step-up, on the running demo.

The demo stack (dev IdP, demo backends, gateway) runs on ephemeral loopback
ports with ``stages.authorize.tool_scopes`` added: ``get_partner`` on the
partners backend needs ``partners:detail``. Clients sign in with the official
MCP SDK client, which asks for the ``mcp`` scope of the 401 challenge first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from tests.integration.test_oauth_flow import error_link

from gateway.app import open_gateway
from gateway.demo.driver import MemoryTokenStorage, run_client
from gateway.demo.runner import DEMO_PORTS, DemoStack, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app
from gateway.events import AccessDenied
from gateway.stages.authorize import AuthorizeConfig
from pipeline import Event

pytestmark = pytest.mark.anyio

SCOPE = "partners:detail"
TOOL_SCOPES = {"partners": {"get_partner": [SCOPE]}}
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-11-25",
}
CALL = {
    "jsonrpc": "2.0",
    "id": "call-7",
    "method": "tools/call",
    "params": {"name": "get_partner", "arguments": {"partner_id": "P-100"}},
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class ScopedStack:
    """The demo with tool scopes, plus the events the gateway published."""

    def __init__(self, stack: DemoStack, events: list[Event]) -> None:
        self.stack = stack
        self.events = events

    async def denials(self) -> list[AccessDenied]:
        await self.stack.gateway.runtime.bus.drain()
        return [e for e in self.events if isinstance(e, AccessDenied)]


@pytest.fixture(scope="module")
async def scoped(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ScopedStack]:
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, tmp_path_factory.mktemp("scoped"))
    stages = {**config.stages, "authorize": {"tool_scopes": TOOL_SCOPES}}
    config = msgspec.structs.replace(config, stages=stages)
    apps = demo_peer_apps(config, urls)
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    async with AsyncExitStack() as exit_stack:
        for name in ("idp", "employees", "partners"):
            await exit_stack.enter_async_context(
                run_app(apps[name], sock=sockets[name])
            )
        gateway = await exit_stack.enter_async_context(open_gateway(config))
        gateway.runtime.bus.subscribe("test", record)
        await exit_stack.enter_async_context(
            run_app(gateway.asgi, sock=sockets["gateway"])
        )
        stack = DemoStack(gateway, config, urls, audit_path=Path("unused"))
        yield ScopedStack(stack, events)


async def base_token(stack: DemoStack) -> str:
    """Sign in as cursor with the SDK and return the ``mcp``-only access token."""
    storage = MemoryTokenStorage()
    await run_client(
        stack.mcp_url("partners"), client_name="cursor", calls=[], storage=storage
    )
    assert storage.tokens is not None
    assert storage.tokens.scope == "mcp"
    return storage.tokens.access_token


async def post(stack: DemoStack, token: str, message: dict[str, Any]) -> httpx.Response:
    """Send one JSON-RPC request in a fresh 2025-11-25 session."""
    headers = {**HEADERS, "authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=10) as http:
        url = stack.mcp_url("partners")
        opened = await http.post(
            url,
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "probe", "version": "0"},
                },
            },
        )
        assert opened.status_code == 200, opened.text
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        return await http.post(url, headers=headers, json=message)


def challenge_fields(header: str) -> dict[str, str]:
    """Parse ``Bearer a="x", b="y"`` into a dict (the values hold no quotes)."""
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer"
    fields = {}
    for part in rest.split(", "):
        key, _, value = part.partition("=")
        fields[key] = value.strip('"')
    return fields


async def test_tool_scope_missing_gets_403_challenge(scoped: ScopedStack) -> None:
    """A call without the tool's scope gets 403 insufficient_scope and an event."""
    stack = scoped.stack
    token = await base_token(stack)
    denied_before = len(await scoped.denials())
    response = await post(stack, token, CALL)
    assert response.status_code == 403
    fields = challenge_fields(response.headers["www-authenticate"])
    assert fields == {
        "error": "insufficient_scope",
        "scope": f"mcp {SCOPE}",
        "resource_metadata": stack.urls["gateway"]
        + "/.well-known/oauth-protected-resource/partners/mcp",
    }
    body = response.json()
    assert body["id"] == "call-7"
    assert body["error"]["data"]["reason"] == "insufficient_scope"
    assert body["error"]["data"]["scope"] == f"mcp {SCOPE}"
    (denial,) = (await scoped.denials())[denied_before:]
    assert denial.reason == "insufficient_scope"
    assert denial.tool == "get_partner"
    assert token not in denial.detail


async def test_tool_scope_missing_tool_still_listed(scoped: ScopedStack) -> None:
    """tools/list keeps a tool whose scope the token lacks, since step-up can add it."""
    stack = scoped.stack
    token = await base_token(stack)
    response = await post(
        stack, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    )
    assert response.status_code == 200
    text = response.text
    assert '"get_partner"' in text
    unscoped = await post(
        stack,
        token,
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "list_partners", "arguments": {}},
        },
    )
    assert unscoped.status_code == 200
    assert "insufficient_scope" not in unscoped.text


async def test_step_up_sdk_client_signs_in_again_and_call_succeeds(
    scoped: ScopedStack,
) -> None:
    """The SDK client answers the challenge with a new sign-in and the call works."""
    stack = scoped.stack
    denied_before = len(await scoped.denials())
    storage = MemoryTokenStorage()
    report = await run_client(
        stack.mcp_url("partners"),
        client_name="cursor",
        calls=[("get_partner", {"partner_id": "P-100"})],
        storage=storage,
    )
    is_error, text = report.results["get_partner"]
    assert not is_error, text
    assert storage.tokens is not None
    assert set((storage.tokens.scope or "").split()) == {"mcp", SCOPE}
    (denial,) = (await scoped.denials())[denied_before:]
    assert denial.reason == "insufficient_scope"
    stepped_up = await post(stack, storage.tokens.access_token, CALL)
    assert stepped_up.status_code == 200
    assert "P-100" in stepped_up.text


async def test_authorize_unknown_scope_redirects_invalid_scope(
    scoped: ScopedStack,
) -> None:
    """A scope that no tool_scopes entry names is refused with invalid_scope."""
    gateway_url = scoped.stack.urls["gateway"]
    redirect = "http://127.0.0.1:5555/callback"
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        registered = await http.post(
            "/oauth2/register",
            json={
                "client_name": "cursor",
                "redirect_uris": [redirect],
                "token_endpoint_auth_method": "none",
            },
        )
        assert registered.status_code == 201, registered.text
        response = await http.get(
            "/oauth2/authorize",
            params={
                "response_type": "code",
                "client_id": registered.json()["client_id"],
                "redirect_uri": redirect,
                "state": "s1",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256",
                "resource": scoped.stack.mcp_url("partners"),
                "scope": f"mcp {SCOPE} partners:admin",
            },
        )
    # A dynamically registered client gets the error through the link of
    # the gateway's error page, which a user would click.
    assert response.status_code == 400
    assert "location" not in response.headers
    query = parse_qs(urlsplit(error_link(response)).query)
    assert query["error"] == ["invalid_scope"]
    assert "partners:admin" in query["error_description"][0]


async def test_metadata_scopes_supported_lists_tool_scopes(
    scoped: ScopedStack,
) -> None:
    """Each backend's PRM and the server metadata list the configured scopes."""
    async with httpx.AsyncClient(
        base_url=scoped.stack.urls["gateway"], timeout=10
    ) as http:
        partners = await http.get("/.well-known/oauth-protected-resource/partners/mcp")
        employees = await http.get(
            "/.well-known/oauth-protected-resource/employees/mcp"
        )
        server = await http.get("/.well-known/oauth-authorization-server")
    assert partners.json()["scopes_supported"] == ["mcp", SCOPE]
    assert employees.json()["scopes_supported"] == ["mcp"]
    assert server.json()["scopes_supported"] == ["mcp", SCOPE]


@pytest.mark.parametrize(
    "tool_scopes",
    [
        {"partners": {"get_partner": []}},
        {"partners": {"get_partner": ["has space"]}},
        {"partners": {"get_partner": ['quote"d']}},
    ],
    ids=["empty-list", "space", "quote"],
)
def test_tool_scopes_config_malformed_rejected(tool_scopes: Any) -> None:
    """Empty scope lists and non-RFC 6749 scope tokens fail validation."""
    with pytest.raises(
        msgspec.ValidationError, match=r"tool_scopes\.partners\.get_partner"
    ):
        msgspec.convert({"tool_scopes": tool_scopes}, AuthorizeConfig)
