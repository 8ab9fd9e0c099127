"""The whole sign-in through the gateway's OAuth front door and the real dev IdP.

Both servers run with uvicorn on ephemeral loopback ports. The test client
plays the browser and the MCP client: it follows the redirects by hand,
submits the consent form, and reads the code from the final redirect to the
client's loopback redirect URI without a server there.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import msgspec
import pytest
from litestar import Litestar, Request, Response, post
from litestar.datastructures import State
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientMetadata,
)
from pydantic import AnyUrl

from gateway.agents import AgentResolver
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.demo.driver import MemoryTokenStorage
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import create_devidp_app, demo_settings
from gateway.events import (
    AuthorizationRejected,
    AuthorizationRequested,
    ClientRegistered,
    ConsentGranted,
    GatewayEvent,
    RefreshTokenReused,
    TokenIssued,
    TokenRequestFailed,
    UserSignedIn,
)
from gateway.facts import PRINCIPAL
from gateway.mcp.jsonrpc import decode, parse_message
from gateway.mcp.response import GatewayResponse
from gateway.oauth.clients import ClientRecord, ClientRegistry
from gateway.oauth.exception_handlers import oauth_exception_handlers
from gateway.oauth.grants import GrantStore
from gateway.oauth.keys import SigningKeys
from gateway.oauth.routes import create_oauth_handlers
from gateway.oauth.upstream import UpstreamClient
from gateway.runtime import Runtime
from gateway.stages.authenticate import AuthenticateConfig, AuthenticateStage
from gateway.store import MemoryStore
from pipeline import Event, EventBus

pytestmark = pytest.mark.anyio

CLIENT_CALLBACK = "http://127.0.0.1:5555/callback"
TRANSACTION = re.compile(r'name="transaction" value="([^"]+)"')


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


RETURN_LINK = re.compile(r'<a class="return"[^>]*href="([^"]+)"')


def error_link(page: httpx.Response) -> str:
    """Return where the error page's "Return to" link goes, as a click would.

    The gateway shows an authorize error for an unverified client on this
    page instead of redirecting to the client's redirect URI.
    """
    assert page.status_code in (400, 403, 503), page.text
    assert "location" not in page.headers
    assert page.headers["content-type"].startswith("text/html")
    match = RETURN_LINK.search(page.text)
    assert match is not None, page.text
    return html.unescape(match.group(1))


@dataclass
class SignIn:
    """The client's view after the authorization redirect."""

    code: str
    verifier: str
    state: str
    redirect_uri: str
    params: dict[str, str]


@dataclass
class Gateway:
    """A running OAuth front door, its runtime, and a browser-like client."""

    url: str
    idp: str
    runtime: Runtime
    browser: httpx.AsyncClient
    events: list[Event] = field(default_factory=list)

    def resource(self, backend: str) -> str:
        return f"{self.url}/{backend}/mcp"

    def events_of(self, kind: type[GatewayEvent]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    async def register(
        self,
        client_name: str = "cursor",
        *,
        method: str = "none",
        redirect_uris: list[str] | None = None,
    ) -> dict[str, Any]:
        response = await self.browser.post(
            "/oauth2/register",
            json={
                "client_name": client_name,
                "redirect_uris": redirect_uris or [CLIENT_CALLBACK],
                "token_endpoint_auth_method": method,
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def authorize(
        self, client: dict[str, Any], **overrides: str | None
    ) -> tuple[httpx.Response, str, str]:
        """Send an authorization request; return the response, verifier and state."""
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(8)
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": CLIENT_CALLBACK,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": self.resource("employees"),
            "scope": "mcp",
        }
        params.update(overrides)
        query = {k: v for k, v in params.items() if v is not None}
        response = await self.browser.get("/oauth2/authorize", params=query)
        return response, verifier, state

    async def consent(
        self, page: httpx.Response, decision: str = "approve"
    ) -> httpx.Response:
        assert page.status_code == 200, page.text
        match = TRANSACTION.search(page.text)
        assert match is not None
        return await self.browser.post(
            "/oauth2/consent",
            data={"transaction": match.group(1), "decision": decision},
        )

    async def follow_idp(self, upstream: httpx.Response) -> httpx.Response:
        """Follow the redirect to the IdP and its redirect back to the callback."""
        assert upstream.status_code == 302, upstream.text
        assert upstream.headers["location"].startswith(self.idp)
        at_idp = await self.browser.get(upstream.headers["location"])
        assert at_idp.status_code == 302, at_idp.text
        back = at_idp.headers["location"]
        assert back.startswith(f"{self.url}/oauth2/callback")
        return await self.browser.get(back)

    async def sign_in(self, client: dict[str, Any], **overrides: str | None) -> SignIn:
        """Run authorize, consent, the IdP and the callback; return the code."""
        page, verifier, state = await self.authorize(client, **overrides)
        final = await self.follow_idp(await self.consent(page))
        assert final.status_code == 302, final.text
        location = final.headers["location"]
        assert location.startswith(overrides.get("redirect_uri") or CLIENT_CALLBACK)
        params = query_of(location)
        return SignIn(params["code"], verifier, state, location, params)

    async def token(
        self, data: dict[str, str], *, auth: tuple[str, str] | None = None
    ) -> httpx.Response:
        if auth is None:
            return await self.browser.post("/oauth2/token", data=data)
        return await self.browser.post("/oauth2/token", data=data, auth=auth)

    async def redeem(self, client: dict[str, Any], sign_in: SignIn) -> httpx.Response:
        return await self.token(
            {
                "grant_type": "authorization_code",
                "code": sign_in.code,
                "redirect_uri": CLIENT_CALLBACK,
                "client_id": client["client_id"],
                "code_verifier": sign_in.verifier,
                "resource": self.resource("employees"),
            }
        )

    async def refresh(
        self, client: dict[str, Any], refresh_token: str
    ) -> httpx.Response:
        return await self.token(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": client["client_id"],
            }
        )

    async def settle(self) -> None:
        """Let the bus deliver published events."""
        await anyio.sleep(0.02)


def gateway_config(public_url: str, issuer: str) -> GatewayConfig:
    return msgspec.convert(
        {
            "server": {"public_url": public_url},
            "upstream": {
                "issuer": issuer,
                "client_id": "agent-proxy",
                "client_secret": "agent-proxy-dev-secret",
            },
            "backends": {
                "employees": {
                    "path": "/employees/mcp",
                    "url": "http://127.0.0.1:1/mcp",
                },
                "partners": {"path": "/partners/mcp", "url": "http://127.0.0.1:1/mcp"},
            },
            "agents": {
                "cursor": {"match": {"client_name": "cursor"}, "backends": ["*"]},
                "claude-code": {
                    "match": {"client_name": "claude-code"},
                    "backends": ["employees"],
                },
            },
        },
        GatewayConfig,
    )


@post("/employees/mcp", status_code=200)
async def employees_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """A stand-in MCP endpoint: the real authenticate stage, then an empty result."""
    runtime: Runtime = request.app.state.runtime
    body = await request.body()
    ctx = RequestContext(
        runtime=runtime,
        request_id="r",
        http_method="POST",
        backend_name="employees",
        backend=runtime.config.backends["employees"],
        resource=runtime.resource_for("employees"),
        headers={name.lower(): value for name, value in request.headers.items()},
        body=body,
        message=parse_message(body),
    )
    stage = AuthenticateStage(
        name="authenticate", config=AuthenticateConfig(), resources=runtime
    )

    async def answer(ctx: RequestContext) -> GatewayResponse:
        payload = b'{"jsonrpc":"2.0","id":1,"result":{}}'
        return GatewayResponse(
            status=200, headers={"content-type": "application/json"}, body=payload
        )

    result = await stage.handle(ctx, answer)
    return Response(result.body, status_code=result.status, headers=result.headers)


@pytest.fixture(scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """The dev IdP and the gateway, shared by the tests of this module."""
    gateway_sock, idp_sock = bind_socket(), bind_socket()
    url = f"http://127.0.0.1:{gateway_sock.getsockname()[1]}"
    idp = f"http://127.0.0.1:{idp_sock.getsockname()[1]}"
    config = gateway_config(url, idp)
    store = MemoryStore()
    bus = EventBus()
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    bus.subscribe("test", record)
    key_file = tmp_path_factory.mktemp("keys") / "signing.json"
    async with httpx.AsyncClient() as http:
        upstream = UpstreamClient(
            config.upstream, redirect_uri=f"{url}/oauth2/callback", http=http
        )
        runtime = Runtime(
            config=config,
            store=store,
            bus=bus,
            keys=SigningKeys.load_or_create(key_file),
            grants=GrantStore(store, upstream),
            upstream=upstream,
            sessions=None,  # type: ignore[arg-type]
            credentials=None,  # type: ignore[arg-type]
            agents=AgentResolver(config),
        )
        app = Litestar(
            route_handlers=[*create_oauth_handlers(), employees_endpoint],
            exception_handlers=oauth_exception_handlers(),
            state=State({"runtime": runtime}),
            openapi_config=None,
        )
        idp_app = create_devidp_app(demo_settings(issuer=idp, gateway_url=url))
        async with (
            anyio.create_task_group() as tg,
            run_app(idp_app, sock=idp_sock),
            run_app(app, sock=gateway_sock),
        ):
            bus.start(tg)
            yield Gateway(url, idp, runtime, http, events)
            await bus.aclose()


@pytest.fixture
async def gateway(servers: Gateway) -> AsyncIterator[Gateway]:
    """The shared servers with a fresh browser (no cookies) and no earlier events."""
    await servers.settle()
    servers.events.clear()
    async with httpx.AsyncClient(base_url=servers.url) as browser:
        yield Gateway(
            servers.url, servers.idp, servers.runtime, browser, servers.events
        )


async def test_sign_in_full_flow_issues_bound_token(gateway: Gateway) -> None:
    """authorize -> consent -> IdP -> callback -> token yields an audience-bound JWT."""
    client = await gateway.register("cursor")
    sign_in = await gateway.sign_in(client)
    assert sign_in.params["iss"] == gateway.url
    response = await gateway.redeem(client, sign_in)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert body["scope"] == "mcp"
    assert body["refresh_token"]
    header, claims = gateway.runtime.keys.verify(
        body["access_token"], algorithms=["ES256"]
    )
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == gateway.url
    assert claims["aud"] == gateway.resource("employees")
    assert claims["sub"] == "00u_alice"
    assert claims["user_iss"] == gateway.idp
    assert claims["client_id"] == client["client_id"]
    assert claims["email"] == "alice@example.com"
    assert claims["agent"] == {
        "id": "cursor",
        "verified": False,
        "trust": "self-asserted",
    }
    grant = await gateway.runtime.grants.get(claims["grant_id"])
    assert grant is not None
    assert grant.upstream_refresh_token
    assert grant.upstream_id_token not in response.text
    assert grant.upstream_refresh_token not in response.text


async def test_sign_in_events_published_in_order(gateway: Gateway) -> None:
    """Each step publishes its event, with user and agent once known."""
    client = await gateway.register("cursor")
    await gateway.redeem(client, await gateway.sign_in(client))
    await gateway.settle()
    kinds = [type(event) for event in gateway.events]
    assert kinds == [
        ClientRegistered,
        AuthorizationRequested,
        ConsentGranted,
        UserSignedIn,
        TokenIssued,
    ]
    (signed_in,) = gateway.events_of(UserSignedIn)
    assert signed_in.user.sub == "00u_alice"
    assert signed_in.agent.id == "cursor"
    assert signed_in.backend == "employees"
    (issued,) = gateway.events_of(TokenIssued)
    assert issued.audience == gateway.resource("employees")
    assert issued.grant_type == "authorization_code"


async def test_sign_in_login_hint_selects_user(gateway: Gateway) -> None:
    """login_hint on the authorize request reaches the IdP."""
    client = await gateway.register("cursor")
    response = await gateway.redeem(
        client, await gateway.sign_in(client, login_hint="bob")
    )
    _, claims = gateway.runtime.keys.verify(
        response.json()["access_token"], algorithms=["ES256"]
    )
    assert claims["sub"] == "00u_bob"


async def test_refresh_token_rotates_and_reuse_revokes(gateway: Gateway) -> None:
    """A refresh rotates the token; replaying the old one revokes the grant."""
    client = await gateway.register("cursor")
    first = (await gateway.redeem(client, await gateway.sign_in(client))).json()
    second = await gateway.refresh(client, first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    _, claims = gateway.runtime.keys.verify(
        rotated["access_token"], algorithms=["ES256"]
    )
    assert claims["aud"] == gateway.resource("employees")

    replay = await gateway.refresh(client, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert await gateway.runtime.grants.get(claims["grant_id"]) is None
    after = await gateway.refresh(client, rotated["refresh_token"])
    assert after.json()["error"] == "invalid_grant"
    await gateway.settle()
    (reused,) = gateway.events_of(RefreshTokenReused)
    assert reused.grant_id == claims["grant_id"]
    assert reused.user.sub == "00u_alice"


async def test_refresh_token_other_client_rejected(gateway: Gateway) -> None:
    """A refresh token works only for the client it was issued to."""
    client = await gateway.register("cursor")
    other = await gateway.register("cursor")
    tokens = (await gateway.redeem(client, await gateway.sign_in(client))).json()
    response = await gateway.refresh(other, tokens["refresh_token"])
    assert response.json()["error"] == "invalid_grant"
    assert (await gateway.refresh(client, tokens["refresh_token"])).status_code == 200


async def test_refresh_narrower_scope_and_unknown_scope(gateway: Gateway) -> None:
    """A refresh may keep the granted scope but not widen it."""
    client = await gateway.register("cursor")
    tokens = (await gateway.redeem(client, await gateway.sign_in(client))).json()
    data = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client["client_id"],
        "scope": "mcp admin",
    }
    response = await gateway.token(data)
    assert response.json()["error"] == "invalid_scope"


async def test_code_replay_revokes_grant(gateway: Gateway) -> None:
    """A code used twice fails and revokes the tokens issued from it."""
    client = await gateway.register("cursor")
    sign_in = await gateway.sign_in(client)
    first = await gateway.redeem(client, sign_in)
    assert first.status_code == 200
    second = await gateway.redeem(client, sign_in)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    refresh = await gateway.refresh(client, first.json()["refresh_token"])
    assert refresh.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("code_verifier", "x" * 64, "invalid_grant"),
        ("redirect_uri", "http://127.0.0.1:5555/other", "invalid_grant"),
        ("resource", "partners", "invalid_target"),
        ("code", "unknown-code", "invalid_grant"),
        ("grant_type", "password", "unsupported_grant_type"),
        ("code_verifier", "", "invalid_request"),
    ],
)
async def test_token_authorization_code_mismatch_rejected(
    gateway: Gateway, field: str, value: str, error: str
) -> None:
    """Each binding of the code is checked at the token endpoint."""
    client = await gateway.register("cursor")
    sign_in = await gateway.sign_in(client)
    data = {
        "grant_type": "authorization_code",
        "code": sign_in.code,
        "redirect_uri": CLIENT_CALLBACK,
        "client_id": client["client_id"],
        "code_verifier": sign_in.verifier,
        field: gateway.resource("partners") if value == "partners" else value,
    }
    response = await gateway.token(data)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"
    await gateway.settle()
    (failed,) = gateway.events_of(TokenRequestFailed)
    assert failed.oauth_error == error


async def test_token_other_client_code_rejected(gateway: Gateway) -> None:
    """A code issued to one client cannot be redeemed by another."""
    client = await gateway.register("cursor")
    other = await gateway.register("cursor")
    sign_in = await gateway.sign_in(client)
    response = await gateway.redeem(other, sign_in)
    assert response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"resource": "partners"}, "invalid_target"),
        ({"resource": "not a URL"}, "invalid_target"),
        ({"scope": "mcp admin"}, "invalid_scope"),
        ({"scope": ""}, "invalid_scope"),
    ],
    ids=["other-backend", "not-a-url", "wider-scope", "empty-scope"],
)
async def test_refresh_rejected_request_keeps_token_usable(
    gateway: Gateway, overrides: dict[str, str], error: str
) -> None:
    """A refresh rejected for its resource or scope does not use up the token."""
    client = await gateway.register("cursor")
    tokens = (await gateway.redeem(client, await gateway.sign_in(client))).json()
    data = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client["client_id"],
        **overrides,
    }
    if data.get("resource") == "partners":
        data["resource"] = gateway.resource("partners")
    rejected = await gateway.token(data)
    assert rejected.status_code == 400
    assert rejected.json()["error"] == error

    retry = await gateway.refresh(client, tokens["refresh_token"])
    assert retry.status_code == 200, retry.text
    await gateway.settle()
    assert gateway.events_of(RefreshTokenReused) == []


async def test_refresh_reused_token_revokes_despite_invalid_scope(
    gateway: Gateway,
) -> None:
    """A rotated-out refresh token revokes the sign-in whatever else is wrong."""
    client = await gateway.register("cursor")
    first = (await gateway.redeem(client, await gateway.sign_in(client))).json()
    rotated = (await gateway.refresh(client, first["refresh_token"])).json()
    replay = await gateway.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client["client_id"],
            "scope": "mcp admin",
        }
    )
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    await gateway.settle()
    assert len(gateway.events_of(RefreshTokenReused)) == 1
    after = await gateway.refresh(client, rotated["refresh_token"])
    assert after.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("client_id", "other", "invalid_grant"),
        ("code_verifier", "x" * 64, "invalid_grant"),
        ("redirect_uri", "http://127.0.0.1:5555/other", "invalid_grant"),
        ("resource", "partners", "invalid_target"),
    ],
    ids=["other-client", "wrong-verifier", "other-redirect-uri", "other-backend"],
)
async def test_code_rejected_exchange_keeps_code_usable(
    gateway: Gateway, field: str, value: str, error: str
) -> None:
    """A code exchange rejected for a wrong binding leaves the code redeemable."""
    client = await gateway.register("cursor")
    other = await gateway.register("cursor")
    sign_in = await gateway.sign_in(client)
    replacements = {
        "other": other["client_id"],
        "partners": gateway.resource("partners"),
    }
    data = {
        "grant_type": "authorization_code",
        "code": sign_in.code,
        "redirect_uri": CLIENT_CALLBACK,
        "client_id": client["client_id"],
        "code_verifier": sign_in.verifier,
        field: replacements.get(value, value),
    }
    rejected = await gateway.token(data)
    assert rejected.status_code == 400
    assert rejected.json()["error"] == error

    redeemed = await gateway.redeem(client, sign_in)
    assert redeemed.status_code == 200, redeemed.text
    replay = await gateway.redeem(client, sign_in)
    assert replay.json()["error"] == "invalid_grant"


async def test_token_resource_trailing_slash_canonical_audience(
    gateway: Gateway,
) -> None:
    """A trailing-slash resource is accepted and the token carries the canonical one."""
    client = await gateway.register("cursor")
    sign_in = await gateway.sign_in(
        client, resource=gateway.resource("employees") + "/"
    )
    data = {
        "grant_type": "authorization_code",
        "code": sign_in.code,
        "redirect_uri": CLIENT_CALLBACK,
        "client_id": client["client_id"],
        "code_verifier": sign_in.verifier,
        "resource": gateway.resource("employees") + "/",
    }
    response = await gateway.token(data)
    assert response.status_code == 200, response.text
    _, claims = gateway.runtime.keys.verify(
        response.json()["access_token"], algorithms=["ES256"]
    )
    assert claims["aud"] == gateway.resource("employees")


async def test_token_confidential_client_authentication(gateway: Gateway) -> None:
    """A confidential client must authenticate with its secret, Basic or form."""
    client = await gateway.register("cursor", method="client_secret_basic")
    secret = client["client_secret"]
    sign_in = await gateway.sign_in(client)
    data = {
        "grant_type": "authorization_code",
        "code": sign_in.code,
        "redirect_uri": CLIENT_CALLBACK,
        "code_verifier": sign_in.verifier,
    }
    wrong = await gateway.token(data, auth=(client["client_id"], secret + "x"))
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic ")
    missing = await gateway.token({**data, "client_id": client["client_id"]})
    assert missing.status_code == 401
    assert missing.json()["error"] == "invalid_client"
    ok = await gateway.token(data, auth=(client["client_id"], secret))
    assert ok.status_code == 200, ok.text
    refreshed = await gateway.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": ok.json()["refresh_token"],
            "client_id": client["client_id"],
            "client_secret": secret,
        }
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_token_unknown_client_invalid_client(gateway: Gateway) -> None:
    """An unknown client_id gets 401 invalid_client."""
    response = await gateway.token(
        {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "nobody"}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_token_public_client_with_secret_rejected(gateway: Gateway) -> None:
    """A public client that sends a secret is rejected rather than half-trusted."""
    client = await gateway.register("cursor")
    response = await gateway.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": client["client_id"],
            "client_secret": "guess",
        }
    )
    assert response.status_code == 401


async def test_token_json_body_invalid_request(gateway: Gateway) -> None:
    """The token endpoint takes form data only."""
    response = await gateway.browser.post("/oauth2/token", json={"grant_type": "x"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_consent_deny_redirects_access_denied(gateway: Gateway) -> None:
    """Deny sends access_denied with state and iss to the client."""
    client = await gateway.register("cursor")
    page, _, state = await gateway.authorize(client)
    response = await gateway.consent(page, "deny")
    assert response.status_code == 302
    params = query_of(response.headers["location"])
    assert params["error"] == "access_denied"
    assert params["state"] == state
    assert params["iss"] == gateway.url
    await gateway.settle()
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "consent_denied"


async def test_consent_page_content_and_headers(gateway: Gateway) -> None:
    """The consent page names client, agent and backend, and cannot be framed."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    assert "cursor" in page.text
    assert "employees" in page.text
    assert gateway.resource("employees") in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "samesite=strict" in page.headers["set-cookie"].lower()
    assert "httponly" in page.headers["set-cookie"].lower()


async def test_consent_without_browser_cookie_forbidden(gateway: Gateway) -> None:
    """A consent form posted without the page's cookie (CSRF) is refused."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    transaction = TRANSACTION.search(page.text)
    assert transaction is not None
    async with httpx.AsyncClient(base_url=gateway.url) as attacker:
        response = await attacker.post(
            "/oauth2/consent",
            data={"transaction": transaction.group(1), "decision": "approve"},
        )
    assert response.status_code == 403
    approved = await gateway.consent(page)
    assert approved.status_code == 302
    assert approved.headers["location"].startswith(gateway.idp)


async def test_consent_foreign_origin_forbidden(gateway: Gateway) -> None:
    """A consent form posted from another origin is refused."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    transaction = TRANSACTION.search(page.text)
    assert transaction is not None
    response = await gateway.browser.post(
        "/oauth2/consent",
        data={"transaction": transaction.group(1), "decision": "approve"},
        headers={"origin": "https://evil.example"},
    )
    assert response.status_code == 403


async def test_consent_transaction_single_use(gateway: Gateway) -> None:
    """A consent transaction works once."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    assert (await gateway.consent(page)).status_code == 302
    again = await gateway.consent(page)
    assert again.status_code == 400
    assert "already used" in again.text or "expired" in again.text


async def test_authorize_agent_not_allowed_access_denied(gateway: Gateway) -> None:
    """An agent that policy keeps off a backend gets access_denied naming both."""
    client = await gateway.register("claude-code")
    response, _, state = await gateway.authorize(
        client, resource=gateway.resource("partners")
    )
    assert response.status_code == 403
    params = query_of(error_link(response))
    assert params["error"] == "access_denied"
    assert "claude-code" in params["error_description"]
    assert "partners" in params["error_description"]
    assert params["state"] == state
    await gateway.settle()
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "agent_not_allowed"
    assert rejected.agent.id == "claude-code"


async def test_authorize_unmatched_client_description_names_client(
    gateway: Gateway,
) -> None:
    """A client that matches no agent is told so by its name, not 'default'."""
    client = await gateway.register("mystery-tool")
    response, _, _ = await gateway.authorize(client)
    params = query_of(error_link(response))
    assert params["error"] == "access_denied"
    description = params["error_description"]
    assert "'mystery-tool'" in description
    assert "no agent in the gateway config matches" in description
    assert "'employees'" in description
    assert "default" not in description
    await gateway.settle()
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "agent_not_allowed"
    assert rejected.agent.id == "default"


async def test_html_pages_content_type_single_charset(gateway: Gateway) -> None:
    """The consent and error pages name the charset once."""
    client = await gateway.register("cursor")
    consent_page, _, _ = await gateway.authorize(client)
    error_page = await gateway.browser.get("/oauth2/callback?state=nope&code=x")
    assert consent_page.headers["content-type"] == "text/html; charset=utf-8"
    assert error_page.headers["content-type"] == "text/html; charset=utf-8"


async def test_authorize_loopback_other_port_accepted(gateway: Gateway) -> None:
    """A loopback redirect URI may use another port than registered."""
    client = await gateway.register("cursor")
    other_port = "http://127.0.0.1:61234/callback"
    sign_in = await gateway.sign_in(client, redirect_uri=other_port)
    response = await gateway.token(
        {
            "grant_type": "authorization_code",
            "code": sign_in.code,
            "redirect_uri": other_port,
            "client_id": client["client_id"],
            "code_verifier": sign_in.verifier,
        }
    )
    assert response.status_code == 200, response.text


async def test_authorize_pre_approved_client_skips_consent(gateway: Gateway) -> None:
    """A pre-approved client goes straight to the IdP."""
    await ClientRegistry(gateway.runtime.store).save(
        ClientRecord(
            client_id="pre-approved",
            client_name="cursor",
            redirect_uris=[CLIENT_CALLBACK],
            created_at=0,
            pre_approved=True,
        )
    )
    response, _, _ = await gateway.authorize({"client_id": "pre-approved"})
    assert response.status_code == 302
    assert response.headers["location"].startswith(gateway.idp)
    final = await gateway.follow_idp(response)
    assert "code" in query_of(final.headers["location"])


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"resource": None}, "invalid_target"),
        ({"resource": "http://127.0.0.1:1/employees/mcp"}, "invalid_target"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
async def test_authorize_invalid_request_redirected(
    gateway: Gateway, overrides: dict[str, str | None], error: str
) -> None:
    """Errors after the redirect URI is verified go back to the client.

    The client is dynamically registered, so the error page's link carries
    the error; see test_oauth_error_page for the automatic redirect.
    """
    client = await gateway.register("cursor")
    response, _, state = await gateway.authorize(client, **overrides)
    location = error_link(response)
    assert location.startswith(CLIENT_CALLBACK)
    params = query_of(location)
    assert params["error"] == error
    assert params["state"] == state
    assert params["iss"] == gateway.url


async def test_authorize_missing_state_redirected_without_state(
    gateway: Gateway,
) -> None:
    """A request without state is refused with invalid_request."""
    client = await gateway.register("cursor")
    response, _, _ = await gateway.authorize(client, state=None)
    params = query_of(error_link(response))
    assert params["error"] == "invalid_request"
    assert "state" not in params


@pytest.mark.parametrize(
    "overrides",
    [
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": "http://127.0.0.1:5555/other"},
        {"client_id": "unknown-client"},
        {"client_id": None},
    ],
)
async def test_authorize_client_problem_error_page(
    gateway: Gateway, overrides: dict[str, str | None]
) -> None:
    """client_id and redirect_uri problems show a page and never redirect."""
    client = await gateway.register("cursor")
    response, _, _ = await gateway.authorize(client, **overrides)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


async def test_callback_unknown_state_error_page(gateway: Gateway) -> None:
    """An IdP redirect with an unknown state shows an error page."""
    response = await gateway.browser.get("/oauth2/callback?state=nope&code=x")
    assert response.status_code == 400
    assert "location" not in response.headers


async def test_callback_idp_error_access_denied(gateway: Gateway) -> None:
    """An IdP refusal reaches the client as access_denied."""
    client = await gateway.register("cursor")
    page, _, state = await gateway.authorize(client, login_hint="mallory")
    final = await gateway.follow_idp(await gateway.consent(page))
    assert final.status_code == 302
    params = query_of(final.headers["location"])
    assert params["error"] == "access_denied"
    assert params["state"] == state
    await gateway.settle()
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "upstream_access_denied"


async def test_callback_state_single_use(gateway: Gateway) -> None:
    """The IdP's redirect back works once."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    upstream = await gateway.consent(page)
    at_idp = await gateway.browser.get(upstream.headers["location"])
    back = at_idp.headers["location"]
    assert (await gateway.browser.get(back)).status_code == 302
    assert (await gateway.browser.get(back)).status_code == 400


async def test_access_token_passes_authenticate_stage(gateway: Gateway) -> None:
    """An issued token authenticates on its backend only, until its grant is revoked."""
    client = await gateway.register("cursor")
    tokens = (await gateway.redeem(client, await gateway.sign_in(client))).json()
    stage = AuthenticateStage(
        name="authenticate", config=AuthenticateConfig(), resources=gateway.runtime
    )

    async def downstream(ctx: RequestContext) -> GatewayResponse:
        assert ctx.fact(PRINCIPAL).sub == "00u_alice"
        return GatewayResponse(status=200)

    async def call(backend: str) -> GatewayResponse:
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
        ctx = RequestContext(
            runtime=gateway.runtime,
            request_id="r",
            http_method="POST",
            backend_name=backend,
            backend=gateway.runtime.config.backends[backend],
            resource=gateway.runtime.resource_for(backend),
            headers={"authorization": f"Bearer {tokens['access_token']}"},
            body=body,
            message=parse_message(body),
        )
        return await stage.handle(ctx, downstream)

    assert (await call("employees")).status == 200
    wrong = await call("partners")
    assert wrong.status == 401
    assert decode(wrong.body)["error"]["data"]["reason"] == "wrong_audience"
    await gateway.refresh(client, tokens["refresh_token"])
    await gateway.refresh(client, tokens["refresh_token"])
    revoked = await call("employees")
    assert decode(revoked.body)["error"]["data"]["reason"] == "grant_revoked"


async def test_mcp_sdk_oauth_client_discovers_and_signs_in(gateway: Gateway) -> None:
    """The official SDK's OAuthClientProvider completes discovery, DCR and sign-in."""
    storage = MemoryTokenStorage()
    redirect: dict[str, str] = {}

    async def open_browser(url: str) -> None:
        assert url.startswith(f"{gateway.url}/oauth2/authorize?")
        page = await gateway.browser.get(url + "&login_hint=bob")
        final = await gateway.follow_idp(await gateway.consent(page))
        redirect.update(query_of(final.headers["location"]))

    async def receive_callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=redirect["code"], state=redirect["state"], iss=redirect["iss"]
        )

    provider = OAuthClientProvider(
        server_url=gateway.resource("employees"),
        client_metadata=OAuthClientMetadata(
            client_name="cursor",
            redirect_uris=[AnyUrl(CLIENT_CALLBACK)],
            grant_types=["authorization_code", "refresh_token"],
        ),
        storage=storage,
        redirect_handler=open_browser,
        callback_handler=receive_callback,
    )
    async with httpx2.AsyncClient(auth=provider) as client:
        response = await client.post(
            gateway.resource("employees"),
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
    assert response.status_code == 200, response.text
    assert storage.client_info is not None
    assert storage.client_info.token_endpoint_auth_method == "client_secret_basic"
    assert storage.tokens is not None
    assert storage.tokens.scope == "mcp"
    _, claims = gateway.runtime.keys.verify(
        storage.tokens.access_token, algorithms=["ES256"]
    )
    assert claims["aud"] == gateway.resource("employees")
    assert claims["sub"] == "00u_bob"
