"""The gateway's exchange against the official ``mcp`` SDK's SEP-990 support.

The backend's authorization server is the SDK's own token endpoint with
``identity_assertion_enabled``, trusting the dev IdP's org server for
ID-JAGs (see :mod:`_sdk_authorization_server`). The backend is an official-SDK
``MCPServer`` that accepts only tokens this authorization server issued for
its resource. The gateway gets an ID-JAG from the dev IdP, redeems it at the
SDK server, and its forward stage calls a tool with the result.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from _devidp_fixtures import (
    BASIC_CLIENT,
    DevIdpHarness,
    MovableClock,
    build_settings,
)
from _exchange_setup import CURSOR, Setup, open_setup
from _sdk_authorization_server import (
    IdJagProvider,
    PathMount,
    sdk_authorization_server,
)
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import ProviderTokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl
from tests.unit.exchange.support import build_runtime, request_context

from gateway.config import IdJagAuth
from gateway.demo.serve import RunningApp, bind_socket, run_app
from gateway.devidp import DevBackendAS, DevRasClient, SigningKey, create_devidp_app
from gateway.errors import ExchangeError
from gateway.facts import (
    AGENT,
    BACKEND_CREDENTIALS,
    DECISION,
    PRINCIPAL,
    Decision,
    Principal,
)
from gateway.mcp.backend import BackendClient
from gateway.runtime import BackendRuntime
from gateway.stages.exchange import ExchangeConfig, ExchangeStage
from gateway.stages.forward import ForwardStage
from gateway.store import MemoryStore
from pipeline import Chain, EventBus
from pipeline.stage import NoConfig

pytestmark = pytest.mark.anyio

SDK_AS = "sdk-as"
SDK_CLIENT = ("agent-proxy-at-sdk", "sdk-as-dev-secret")
SCOPE = "employees:read"


class SdkStack:
    """The dev IdP with the SDK authorization server under its ``sdk-as`` path."""

    def __init__(self, devidp: DevIdpHarness, provider: IdJagProvider) -> None:
        self.devidp = devidp
        self.provider = provider

    @property
    def issuer(self) -> str:
        return self.provider.issuer

    def auth(self) -> IdJagAuth:
        """The ``id-jag`` backend auth naming the SDK server as issuer."""
        return IdJagAuth(
            issuer=self.issuer,
            token_endpoint=f"{self.issuer}/token",
            resource=self.devidp.employees_resource,
            client_id=SDK_CLIENT[0],
            client_secret=SDK_CLIENT[1],
            scopes=[SCOPE],
        )


@pytest.fixture
async def stack(
    anyio_backend: str,
    org_key: SigningKey,
    backend_keys: dict[str, SigningKey],
    assertion_key: SigningKey,
    employees_socket: socket.socket,
) -> AsyncIterator[SdkStack]:
    """The dev IdP, with an ``sdk-as`` backend whose server is the SDK's."""
    sock = bind_socket()
    idp = f"http://127.0.0.1:{sock.getsockname()[1]}"
    resource = f"http://127.0.0.1:{employees_socket.getsockname()[1]}/mcp"
    base = build_settings(idp, resource, {"keys": [assertion_key.public_jwk()]})
    # The org server issues ID-JAGs only for its configured backends, so the SDK
    # server gets a backend entry. PathMount hides the dev IdP's own server there.
    sdk_backend = DevBackendAS(
        name=SDK_AS,
        resource=resource,
        scopes=[SCOPE],
        clients=[DevRasClient(client_id=SDK_CLIENT[0], client_secret=SDK_CLIENT[1])],
        client_mapping={BASIC_CLIENT[0]: SDK_CLIENT[0]},
    )
    settings = msgspec.structs.replace(base, backends=[*base.backends, sdk_backend])
    provider = IdJagProvider(
        issuer=settings.backend_issuer(sdk_backend),
        idp_issuer=idp,
        idp_jwks_url=f"{idp}/oauth2/v1/keys",
        client_id=SDK_CLIENT[0],
        client_secret=SDK_CLIENT[1],
    )
    clock = MovableClock()
    devidp_app = create_devidp_app(
        settings, org_key=org_key, backend_keys=backend_keys, clock=clock
    )
    app = PathMount(devidp_app, f"/oauth2/{SDK_AS}", sdk_authorization_server(provider))
    async with (
        run_app(app, sock=sock),
        httpx.AsyncClient(base_url=idp, follow_redirects=False) as http,
    ):
        devidp = DevIdpHarness(settings, idp, org_key, clock, http)
        yield SdkStack(devidp, provider)


@pytest.fixture
async def sdk_backend(
    stack: SdkStack, employees_socket: socket.socket
) -> AsyncIterator[RunningApp]:
    """An official-SDK MCP server that accepts the SDK server's tokens only."""
    # NOTE: the tokens are opaque, so the backend checks them in the provider's
    # memory through the SDK's ProviderTokenVerifier, not by introspection.
    server = MCPServer(
        "sdk-protected",
        token_verifier=ProviderTokenVerifier(stack.provider),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(stack.issuer),
            resource_server_url=AnyHttpUrl(stack.devidp.employees_resource),
            required_scopes=[SCOPE],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def whoami() -> str:
        """Return the caller the access token names."""
        token = get_access_token()
        assert token is not None
        return json.dumps(
            {
                "sub": token.subject,
                "client_id": token.client_id,
                "resource": token.resource,
                "iss": (token.claims or {}).get("iss"),
            }
        )

    app = server.streamable_http_app(stateless_http=True, json_response=True)
    async with run_app(app, sock=employees_socket) as running:
        yield running


async def test_sdk_authorization_server_advertises_id_jag_profile(
    stack: SdkStack,
) -> None:
    """The SDK server's metadata names the JWT-bearer grant and the ID-JAG profile."""
    response = await stack.devidp.http.get(
        f"/oauth2/{SDK_AS}/.well-known/oauth-authorization-server"
    )
    assert response.status_code == 200, response.text
    metadata = response.json()
    assert metadata["issuer"] == stack.issuer
    assert metadata["token_endpoint"] == f"{stack.issuer}/token"
    assert (
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
        in (metadata["grant_types_supported"])
    )
    assert metadata["authorization_grant_profiles_supported"] == [
        "urn:ietf:params:oauth:grant-profile:id-jag"
    ]


async def test_sdk_authorization_server_exchange_token_issued_by_sdk(
    stack: SdkStack,
) -> None:
    """The gateway's exchange yields a token the SDK server issued for Alice."""
    async with open_setup(stack.devidp, auth=stack.auth()) as setup:
        principal = await setup.sign_in("alice")
        obtained = await setup.service.obtain(
            backend="employees", principal=principal, agent=CURSOR
        )

    token = obtained.credentials.headers["authorization"].removeprefix("Bearer ")
    issued = stack.provider.tokens[token]
    assert issued.subject == principal.sub
    assert issued.client_id == SDK_CLIENT[0]
    assert issued.resource == stack.devidp.employees_resource
    assert issued.scopes == [SCOPE]
    assert obtained.audience == stack.issuer
    redeemed = stack.provider.redeemed[0]
    assert redeemed["aud"] == stack.issuer
    assert redeemed["iss"] == stack.devidp.issuer
    assert setup.count(f"/oauth2/{SDK_AS}/token") == 1
    # The JWT-bearer request carries no resource: the ID-JAG's resource claim
    # names it, and the SDK server binds the token to that claim.
    request = stack.provider.requests[0]
    assert request.resource is None
    assert request.scopes == [SCOPE]


async def test_sdk_authorization_server_wrong_secret_invalid_client(
    stack: SdkStack,
) -> None:
    """The SDK server's 401 ``invalid_client`` becomes the exchange's error."""
    auth = msgspec.structs.replace(stack.auth(), client_secret="wrong")
    async with open_setup(stack.devidp, auth=auth) as setup:
        principal = await setup.sign_in("alice")
        with pytest.raises(ExchangeError) as caught:
            await setup.service.obtain(
                backend="employees", principal=principal, agent=CURSOR
            )

    assert caught.value.oauth_error == "invalid_client"
    assert caught.value.reason == "invalid_client"
    assert caught.value.step == "jwt_bearer"
    assert stack.provider.requests == []


async def test_sdk_authorization_server_tool_call_reaches_backend(
    stack: SdkStack, sdk_backend: RunningApp
) -> None:
    """A tool call through the exchange and forward stages reaches the SDK backend."""
    async with open_setup(stack.devidp, auth=stack.auth()) as setup:
        principal = await setup.sign_in("alice")
        result = await call_whoami(setup, principal)

    assert "error" not in result, result
    content = result["result"]["content"][0]["text"]
    caller = json.loads(content)
    assert caller == {
        "sub": principal.sub,
        "client_id": SDK_CLIENT[0],
        "resource": stack.devidp.employees_resource,
        "iss": stack.issuer,
    }


async def test_sdk_authorization_server_id_jag_replay_rejected(
    stack: SdkStack,
) -> None:
    """The SDK server refuses a second redemption of the same ID-JAG."""
    assertion = await stack.devidp.id_jag("alice", audience=stack.issuer, scope=SCOPE)
    data = {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": assertion,
        "client_id": SDK_CLIENT[0],
    }
    url = f"/oauth2/{SDK_AS}/token"
    first = await stack.devidp.http.post(url, data=data, auth=SDK_CLIENT)
    second = await stack.devidp.http.post(url, data=data, auth=SDK_CLIENT)
    assert first.status_code == 200, first.text
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"


async def call_whoami(setup: Setup, principal: Principal) -> dict[str, Any]:
    """Run ``tools/call whoami`` through the exchange and forward stages."""
    runtime = build_runtime(
        setup.config,
        credentials=setup.service,
        grants=setup.grants,
        store=MemoryStore(),
        bus=EventBus(),
    )
    backend = setup.config.backends["employees"]
    forward = ForwardStage(name="forward", config=NoConfig(), resources=runtime)
    exchange = ExchangeStage(
        name="exchange", config=ExchangeConfig(), resources=runtime
    )

    client = BackendClient(backend)
    runtime.backends["employees"] = BackendRuntime(
        name="employees",
        config=backend,
        resource=runtime.resource_for("employees"),
        chain=Chain([forward]),
        client=client,
    )
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}},
        }
    ).encode()

    ctx = request_context(runtime, "employees", body)
    ctx.provide(PRINCIPAL, principal)
    ctx.provide(AGENT, CURSOR)
    ctx.provide(DECISION, Decision(allowed=True, backend="employees"))

    try:
        response = await exchange.handle(
            ctx, lambda inner: forward.handle(inner, _no_next)
        )
        assert ctx.fact(BACKEND_CREDENTIALS).kind == "id-jag"
        assert response.status == 200, response.body
        payload = response.body
        if response.stream is not None:
            payload = b"".join([chunk async for chunk in response.stream])
        result: dict[str, Any] = json.loads(payload)
        return result
    finally:
        await client.aclose()


async def _no_next(_ctx: Any) -> Any:
    raise AssertionError("the forward stage is the last stage")
