"""A gateway whose chain includes an optional stage, and a backend to test it.

The stack is the demo: the dev IdP, both demo backends, and the whole
gateway with real tokens and the jsonl audit sink. Its ``partners`` backend
points at :func:`create_records_backend`, an official-SDK server whose tools
return e-mail addresses and keys, and gets its own chain and stage settings.
``partners`` authenticates with a static key, which the records backend
ignores; ``cursor`` and ``inspector`` may use it, ``claude-code`` may not.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import httpx2
import msgspec
from _identity_support import identity_stack
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventStore
from pydantic import BaseModel

from gateway.config import GatewayConfig
from gateway.demo.driver import REDIRECT_URI, BrowserDriver
from gateway.demo.runner import DemoStack
from gateway.demo.serve import run_app
from gateway.oauth import pkce

BACKEND = "partners"
EMAIL = "carol.jones@example.org"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRETS = (EMAIL, ACCESS_KEY)
CLIENT_NAMES = {"cursor": "cursor", "inspector": "MCP Inspector"}
"""The DCR ``client_name`` that the demo config maps to each agent."""


class ContactCard(BaseModel):
    """The structured result of the ``contact_card`` tool."""

    name: str
    email: str
    notes: list[str]


def create_records_backend(
    *, json_response: bool = False, event_store: EventStore | None = None
) -> Any:
    """Build the records backend: tools whose results carry an e-mail and a key.

    - ``contact``: text naming :data:`EMAIL` and :data:`ACCESS_KEY`;
    - ``contact_card``: the same as structured content (and its JSON text);
    - ``slow_contact``: two progress notifications whose message names
      :data:`EMAIL`, then the ``contact`` text;
    - ``resumed_contact``: one progress notification, then it closes the
      request's event stream, so the client resumes it with a GET
      (``Last-Event-ID``, which needs ``event_store``) and gets the
      ``contact`` text there;
    - ``echo``: the text unchanged;
    - resource ``records://carol``: text naming :data:`EMAIL`.
    """
    server = MCPServer("records-backend")

    @server.tool()
    def contact(name: str) -> str:
        """Return a contact line with an e-mail address and an access key."""
        return f"{name}: mail {EMAIL}, deploy key {ACCESS_KEY}."

    @server.tool()
    def contact_card(name: str) -> ContactCard:
        """Return a contact as structured content."""
        return ContactCard(name=name, email=EMAIL, notes=[f"key {ACCESS_KEY}"])

    @server.tool()
    async def slow_contact(name: str, ctx: Context) -> str:
        """Report progress naming the e-mail address, then return the contact."""
        await ctx.report_progress(1, 2, f"looking up {EMAIL}")
        await ctx.report_progress(2, 2, f"found {EMAIL}")
        return f"{name}: mail {EMAIL}, deploy key {ACCESS_KEY}."

    @server.tool()
    async def resumed_contact(name: str, ctx: Context) -> str:
        """Close this request's stream after a progress report, then return."""
        await ctx.report_progress(1, 2)
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)
        return f"{name}: mail {EMAIL}, deploy key {ACCESS_KEY}."

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.resource("records://carol")
    def carol() -> str:
        """Return Carol's record."""
        return f"Carol Jones <{EMAIL}>"

    return server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=json_response,
        event_store=event_store,
        retry_interval=100 if event_store is not None else None,
    )


def with_partners_chain(
    config: GatewayConfig, backend_url: str, pipeline: list[str], stages: dict[str, Any]
) -> GatewayConfig:
    """Return ``config`` with ``partners`` at ``backend_url`` behind ``pipeline``."""
    partners = msgspec.structs.replace(
        config.backends[BACKEND], url=backend_url, pipeline=pipeline
    )
    return msgspec.structs.replace(
        config,
        backends={**config.backends, BACKEND: partners},
        stages={**config.stages, **stages},
    )


@contextlib.asynccontextmanager
async def stage_stack(
    var_dir: Path,
    pipeline: list[str],
    stages: dict[str, Any],
    *,
    json_response: bool = False,
    event_store: EventStore | None = None,
) -> AsyncIterator[DemoStack]:
    """Run the records backend and the demo stack with ``partners`` changed."""
    app = create_records_backend(json_response=json_response, event_store=event_store)
    async with run_app(app, shutdown_timeout=0.5) as backend:

        def edit(config: GatewayConfig) -> GatewayConfig:
            return with_partners_chain(config, f"{backend.url}/mcp", pipeline, stages)

        async with identity_stack(var_dir, edit) as stack:
            yield stack


async def access_token(stack: DemoStack, *, agent: str, user: str = "alice") -> str:
    """Sign ``user`` in for a new client of ``agent``; return its access token.

    It registers a public client the way an MCP client does, signs in as a
    browser and redeems the code, sending no MCP request on the way, so no
    rate-limit token is spent.
    """
    resource = stack.mcp_url(BACKEND)
    gateway = stack.urls["gateway"]
    async with httpx.AsyncClient(timeout=10.0) as http:
        registered = await http.post(
            f"{gateway}/oauth2/register",
            json={
                "client_name": CLIENT_NAMES[agent],
                "redirect_uris": [REDIRECT_URI],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            },
        )
        assert registered.status_code == 201, registered.text
        client_id = registered.json()["client_id"]
        verifier = pkce.new_code_verifier()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": REDIRECT_URI,
                "state": "state-" + verifier[:8],
                "code_challenge": pkce.s256_challenge(verifier),
                "code_challenge_method": "S256",
                "resource": resource,
            }
        )
        browser = BrowserDriver(login_hint=user)
        await browser.redirect_handler(f"{gateway}/oauth2/authorize?{query}")
        code = (await browser.callback_handler()).code
        token = await http.post(
            f"{gateway}/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
                "client_id": client_id,
                "resource": resource,
            },
        )
    assert token.status_code == 200, token.text
    return str(token.json()["access_token"])


@contextlib.asynccontextmanager
async def sdk_client(
    url: str,
    token: str,
    responses: list[httpx2.Response] | None = None,
    *,
    mode: str = "legacy",
) -> AsyncIterator[Client]:
    """Open the official SDK client with a bearer token, recording responses."""

    async def record(response: httpx2.Response) -> None:
        if responses is not None:
            responses.append(response)

    async with (
        httpx2.AsyncClient(
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx2.Timeout(10.0),
            event_hooks={"response": [record]},
        ) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client
