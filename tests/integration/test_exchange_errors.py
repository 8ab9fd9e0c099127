"""Exchange failures as client errors, through the exchange stage and the dev IdP.

Each failure is one the real dev IdP answers: an expired ID token refreshed
first, an upstream refresh that no longer works, an ID-JAG refusal
(``invalid_target``, ``unauthorized_client``) and an outage switched on with
:class:`~gateway.devidp.faults.TokenOutage`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import msgspec
import pytest
from _devidp_fixtures import (
    BASIC_CLIENT,
    POST_CLIENT,
    TOKEN_EXCHANGE,
    DevIdpHarness,
    MovableClock,
    build_settings,
)
from _exchange_setup import (
    CURSOR,
    Setup,
    employees_auth,
    open_setup,
    other_client_id_token,
)
from tests.integration import test_oauth_flow
from tests.integration.test_oauth_flow import Gateway
from tests.unit.exchange.support import EventLog, build_runtime, request_context

from gateway.config import IdJagAuth, UpstreamConfig
from gateway.context import RequestContext
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import SigningKey, create_devidp_app
from gateway.devidp.faults import TokenOutage
from gateway.devidp.org import OrgAuthorizationServer
from gateway.events import ExchangeFailed, TokenExchanged
from gateway.exchange.service import CredentialService
from gateway.facts import AGENT, DECISION, PRINCIPAL, Decision, Principal
from gateway.mcp.response import GatewayResponse
from gateway.runtime import Runtime
from gateway.stages.exchange import ExchangeConfig, ExchangeStage
from gateway.store import MemoryStore
from pipeline import EventBus

pytestmark = pytest.mark.anyio

# The gateway front door and dev IdP of the OAuth flow tests, for the test
# that needs a gateway refresh token.
servers = test_oauth_flow.servers
gateway = test_oauth_flow.gateway

REFRESH_TOKEN = "refresh_token"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def switchable(
    anyio_backend: str,
    org_key: SigningKey,
    backend_keys: dict[str, SigningKey],
    assertion_key: SigningKey,
    employees_socket: socket.socket,
) -> AsyncIterator[tuple[DevIdpHarness, OrgAuthorizationServer]]:
    """A dev IdP like ``devidp``, with its org server to switch an outage on."""
    sock = bind_socket()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    resource = f"http://127.0.0.1:{employees_socket.getsockname()[1]}/mcp"
    settings = build_settings(issuer, resource, {"keys": [assertion_key.public_jwk()]})
    clock = MovableClock()
    app = create_devidp_app(
        settings, org_key=org_key, backend_keys=backend_keys, clock=clock
    )
    async with (
        run_app(app, sock=sock),
        httpx.AsyncClient(base_url=issuer, follow_redirects=False) as http,
    ):
        harness = DevIdpHarness(settings, issuer, org_key, clock, http)
        yield harness, app.state.org


async def _ok(ctx: RequestContext) -> GatewayResponse:
    return GatewayResponse(status=200, body=b'{"jsonrpc":"2.0","id":7,"result":{}}')


def runtime_of(setup: Setup) -> Runtime:
    return build_runtime(
        setup.config,
        credentials=setup.service,
        grants=setup.grants,
        store=MemoryStore(),
        bus=EventBus(),
    )


async def run_stage(
    runtime: Runtime, principal: Principal
) -> tuple[GatewayResponse, EventLog]:
    """Run the exchange stage for one ``tools/call`` (JSON-RPC id 7)."""
    ctx = request_context(runtime, "employees")
    ctx.provide(PRINCIPAL, principal)
    ctx.provide(AGENT, CURSOR)
    ctx.provide(DECISION, Decision(allowed=True, backend="employees"))
    stage = ExchangeStage(name="exchange", config=ExchangeConfig(), resources=None)
    async with EventLog(runtime.bus).running() as log:
        response = await stage.handle(ctx, _ok)
    return response, log


def error_of(response: GatewayResponse) -> dict[str, Any]:
    body = msgspec.json.decode(response.body)
    assert body["id"] == 7
    error: dict[str, Any] = body["error"]
    return error


async def keep_expired(setup: Setup, tokens: dict[str, Any]) -> Principal:
    """Keep a sign-in whose ID token has expired, with its upstream refresh token."""
    principal = await setup.keep(tokens["id_token"], grant_id="grant-1")
    grant = await setup.grants.get("grant-1")
    assert grant is not None
    grant.upstream_refresh_token = tokens[REFRESH_TOKEN]
    grant.id_token_expires_at = int(time.time()) - 10
    await setup.grants.save(grant)
    return principal


async def test_exchange_expired_id_token_refreshed_before_exchange(
    devidp: DevIdpHarness,
) -> None:
    """An expired upstream ID token is refreshed, then exchanged; the grant lives."""
    async with open_setup(devidp) as setup:
        tokens = await devidp.sign_in("alice")
        principal = await keep_expired(setup, tokens)
        response, log = await run_stage(runtime_of(setup), principal)
        grant = await setup.grants.get("grant-1")

    assert response.status == 200
    assert [event.cache for event in log.of(TokenExchanged)] == ["miss"]
    assert log.of(ExchangeFailed) == []
    assert grant is not None
    assert grant.upstream_id_token != tokens["id_token"]
    assert grant.id_token_expires_at > time.time() + 60
    assert grant.upstream_refresh_token != tokens[REFRESH_TOKEN]
    # One refresh, then one token exchange, at the org token endpoint.
    assert setup.count("/oauth2/v1/token") == 2


async def test_exchange_refresh_rejected_revokes_grant_and_challenges(
    gateway: Gateway,
) -> None:
    """A rejected upstream refresh revokes the grant: 401, then no gateway refresh.

    The ID token's expiry is moved into the past in the grant store, since the
    gateway checks it against the wall clock.
    """
    client = await gateway.register("cursor")
    redeemed = await gateway.redeem(client, await gateway.sign_in(client))
    assert redeemed.status_code == 200, redeemed.text
    tokens = redeemed.json()
    _, claims = gateway.runtime.keys.verify(
        tokens["access_token"], algorithms=["ES256"]
    )
    grants = gateway.runtime.grants
    grant = await grants.get(claims["grant_id"])
    assert grant is not None and grant.upstream_refresh_token
    # The upstream session ends: the IdP rotated the refresh token elsewhere,
    # so the one stored in the grant is a reused one and its family is revoked.
    async with httpx.AsyncClient(base_url=gateway.idp) as idp:
        rotated = await idp.post(
            "/oauth2/v1/token",
            data={
                "grant_type": REFRESH_TOKEN,
                REFRESH_TOKEN: grant.upstream_refresh_token,
            },
            auth=BASIC_CLIENT,
        )
    assert rotated.status_code == 200, rotated.text
    grant.id_token_expires_at = int(time.time()) - 10
    await grants.save(grant)

    runtime, service = exchange_runtime(gateway)
    principal = Principal(
        iss=claims["user_iss"],
        sub=claims["sub"],
        client_id=claims["client_id"],
        grant_id=claims["grant_id"],
    )
    try:
        response, log = await run_stage(runtime, principal)
    finally:
        await service.aclose()

    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    metadata = f"{gateway.url}/.well-known/oauth-protected-resource/employees/mcp"
    assert f'resource_metadata="{metadata}"' in challenge
    assert 'error="invalid_token"' in challenge
    error = error_of(response)
    assert error["data"]["reason"] == "reauthentication_required"
    assert error["data"]["oauth_error"] == "invalid_grant"
    (failed,) = log.of(ExchangeFailed)
    assert (failed.step, failed.oauth_error) == ("upstream_refresh", "invalid_grant")
    assert await grants.get(claims["grant_id"]) is None
    refreshed = await gateway.refresh(client, tokens[REFRESH_TOKEN])
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


def exchange_runtime(gateway: Gateway) -> tuple[Runtime, CredentialService]:
    """A runtime whose ``employees`` backend is ``id-jag``, sharing the grants."""
    issuer = f"{gateway.idp}/oauth2/employees"
    auth = IdJagAuth(
        issuer=issuer,
        token_endpoint=f"{issuer}/v1/token",
        resource="http://127.0.0.1:8001/mcp",
        client_id="agent-proxy-at-employees",
        client_secret="employees-dev-secret",
        scopes=["employees:read"],
    )
    base = gateway.runtime.config
    backend = msgspec.structs.replace(base.backends["employees"], auth=auth)
    config = msgspec.structs.replace(
        base, backends={**base.backends, "employees": backend}
    )
    service = CredentialService(
        config, grants=gateway.runtime.grants, upstream=gateway.runtime.upstream
    )
    runtime = build_runtime(
        config,
        credentials=service,
        grants=gateway.runtime.grants,
        store=MemoryStore(),
        bus=EventBus(),
    )
    return runtime, service


@pytest.mark.parametrize("oauth_error", ["invalid_target", "unauthorized_client"])
async def test_exchange_idp_refusal_jsonrpc_error_with_reason(
    devidp: DevIdpHarness, oauth_error: str
) -> None:
    """A refusal a sign-in cannot fix is a JSON-RPC error in 200; the grant stays."""
    if oauth_error == "invalid_target":
        # A resource the employees connection does not have ("Resource mismatch").
        auth = employees_auth(devidp, resource="http://127.0.0.1:1/other")
        settings: dict[str, Any] = {"auth": auth}
    else:
        # An IdP client with no connection to the employees server.
        settings = {
            "upstream": UpstreamConfig(
                issuer=devidp.issuer,
                client_id=POST_CLIENT[0],
                client_secret=POST_CLIENT[1],
                token_endpoint_auth_method="client_secret_post",
            )
        }
    async with open_setup(devidp, **settings) as setup:
        if oauth_error == "invalid_target":
            principal = await setup.sign_in("alice")
        else:
            id_token = await other_client_id_token(devidp)
            principal = await setup.keep(id_token, grant_id="grant-1")
        response, log = await run_stage(runtime_of(setup), principal)
        kept = await setup.grants.get("grant-1")

    assert response.status == 200
    assert "www-authenticate" not in response.headers
    error = error_of(response)
    assert error["code"] == -32603
    assert error["data"]["reason"] == oauth_error
    assert error["data"]["oauth_error"] == oauth_error
    assert error["data"]["step"] == "token_exchange"
    assert "retry_after" not in error["data"]
    (failed,) = log.of(ExchangeFailed)
    assert (failed.reason, failed.oauth_error) == (oauth_error, oauth_error)
    assert kept is not None


@pytest.mark.parametrize(
    ("outage", "retry_after", "oauth_error"),
    [
        (TokenOutage(status=503, retry_after="12"), 12, "temporarily_unavailable"),
        (TokenOutage(status=429, retry_after="86400"), 3600, "temporarily_unavailable"),
        (TokenOutage(status=502, error=None), 30, None),
    ],
    ids=["503-retry-after", "429-bounded", "502-no-hint"],
)
async def test_exchange_idp_outage_jsonrpc_error_with_retry_after(
    switchable: tuple[DevIdpHarness, OrgAuthorizationServer],
    outage: TokenOutage,
    retry_after: int,
    oauth_error: str | None,
) -> None:
    """An IdP outage is a JSON-RPC error with a bounded ``data.retry_after``."""
    devidp, org = switchable
    async with open_setup(devidp) as setup:
        principal = await setup.sign_in("alice")
        org.token_outage = replace(outage, grant_types=frozenset({TOKEN_EXCHANGE}))
        response, log = await run_stage(runtime_of(setup), principal)
        kept = await setup.grants.get("grant-1")

    assert response.status == 200
    error = error_of(response)
    assert error["data"]["reason"] == "idp_unavailable"
    assert error["data"]["retry_after"] == retry_after
    assert error["data"].get("oauth_error") == oauth_error
    (failed,) = log.of(ExchangeFailed)
    assert (failed.reason, failed.step) == ("idp_unavailable", "token_exchange")
    assert failed.oauth_error == oauth_error
    assert kept is not None


async def test_exchange_upstream_refresh_outage_keeps_grant(
    switchable: tuple[DevIdpHarness, OrgAuthorizationServer],
) -> None:
    """An outage during the upstream refresh returns retry_after and keeps the grant."""
    devidp, org = switchable
    async with open_setup(devidp) as setup:
        principal = await keep_expired(setup, await devidp.sign_in("alice"))
        org.token_outage = TokenOutage(
            status=503, retry_after="5", grant_types=frozenset({REFRESH_TOKEN})
        )
        response, log = await run_stage(runtime_of(setup), principal)
        kept = await setup.grants.get("grant-1")

    assert response.status == 200
    error = error_of(response)
    assert error["data"]["reason"] == "idp_unavailable"
    assert error["data"]["step"] == "upstream_refresh"
    assert error["data"]["retry_after"] == 5
    (failed,) = log.of(ExchangeFailed)
    assert failed.step == "upstream_refresh"
    assert kept is not None
