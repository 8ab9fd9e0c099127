"""Cross App Access against the real dev IdP: the credential service end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from _devidp_fixtures import (
    POST_CLIENT,
    DevIdpHarness,
    build_settings,
    decode_unverified,
)
from _exchange_setup import (
    CLAUDE,
    CURSOR,
    Setup,
    employees_auth,
    open_setup,
    other_client_id_token,
)
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.config import UpstreamConfig
from gateway.demo.serve import RunningApp, bind_socket, run_app
from gateway.devidp import SigningKey, create_devidp_app
from gateway.errors import ExchangeError, UpstreamError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def setup(devidp: DevIdpHarness) -> AsyncIterator[Setup]:
    """The credential service with the demo's employees backend."""
    async with open_setup(devidp) as value:
        yield value


async def test_service_devidp_token_from_backend_as_accepted(
    setup: Setup, employees_backend: RunningApp
) -> None:
    """Alice's exchanged token comes from the employees AS and the backend takes it."""
    principal = await setup.sign_in("alice")
    credentials = await setup.service.credentials_for(
        backend="employees", principal=principal, agent=CURSOR
    )

    assert credentials.kind == "id-jag"
    assert credentials.cache == "miss"
    scheme, _, token = credentials.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    header, claims = decode_unverified(token)
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == setup.devidp.employees_issuer
    assert claims["aud"] == setup.devidp.employees_resource
    assert claims["sub"] == "00u_alice"
    assert claims["client_id"] == "agent-proxy-at-employees"
    grant = await setup.grants.get(principal.grant_id)
    assert grant is not None
    assert token != grant.upstream_id_token

    result = await call_employees(employees_backend, credentials.headers)
    assert result["requested_by"]["sub"] == "00u_alice"
    assert result["requested_by"]["client_id"] == "agent-proxy-at-employees"


async def test_service_devidp_second_call_cache_hit(setup: Setup) -> None:
    """The second request reuses the token: one exchange, one redemption."""
    principal = await setup.sign_in("alice")
    first = await setup.service.credentials_for(
        backend="employees", principal=principal, agent=CURSOR
    )
    second = await setup.service.credentials_for(
        backend="employees", principal=principal, agent=CURSOR
    )

    assert first.cache == "miss"
    assert second.cache == "hit"
    assert second.headers == first.headers
    assert setup.count("/oauth2/v1/token") == 1
    assert setup.count("/oauth2/employees/v1/token") == 1


async def test_service_devidp_users_and_agents_not_shared(setup: Setup) -> None:
    """Bob, and Alice through another agent, each get their own token."""
    alice = await setup.sign_in("alice", grant_id="grant-alice")
    bob = await setup.sign_in("bob", grant_id="grant-bob")

    tokens = set()
    for principal, agent in ((alice, CURSOR), (bob, CURSOR), (alice, CLAUDE)):
        credentials = await setup.service.credentials_for(
            backend="employees", principal=principal, agent=agent
        )
        assert credentials.cache == "miss"
        tokens.add(credentials.headers["authorization"])

    assert len(tokens) == 3
    bob_token = [t for t in tokens if _claims(t)["sub"] == "00u_bob"]
    assert len(bob_token) == 1


async def test_service_devidp_twenty_concurrent_one_exchange(setup: Setup) -> None:
    """Twenty concurrent requests for one key cause exactly one exchange."""
    principal = await setup.sign_in("alice")
    before = setup.count("/oauth2/v1/token")
    results: list[Any] = []

    async def one() -> None:
        results.append(
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )
        )

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)

    assert len(results) == 20
    assert setup.count("/oauth2/v1/token") - before == 1
    assert setup.count("/oauth2/employees/v1/token") == 1
    assert len({r.headers["authorization"] for r in results}) == 1
    assert [r.cache for r in results].count("miss") == 1


async def test_service_devidp_near_expiry_exchanges_again(setup: Setup) -> None:
    """A token within ``refresh_before`` of expiry is replaced by a new exchange."""
    principal = await setup.sign_in("alice")
    first = await setup.service.credentials_for(
        backend="employees", principal=principal, agent=CURSOR
    )
    setup.clock.offset += 3600 - 60

    second = await setup.service.credentials_for(
        backend="employees", principal=principal, agent=CURSOR
    )

    assert second.cache == "miss"
    assert second.headers != first.headers
    assert setup.count("/oauth2/employees/v1/token") == 2


async def test_service_devidp_invalidate_exchanges_again(setup: Setup) -> None:
    """After a backend 401 the rejected token is dropped and a new one fetched."""
    principal = await setup.sign_in("alice")
    rejected = await setup.service.credentials_for(
        backend="employees", principal=principal, agent=CURSOR
    )
    dropped = setup.service.invalidate(
        backend="employees", principal=principal, agent=CURSOR, rejected=rejected
    )
    again = await setup.service.credentials_for(
        backend="employees", principal=principal, agent=CURSOR
    )

    assert dropped is True
    assert again.cache == "miss"
    assert again.headers != rejected.headers


Overrides = Callable[[DevIdpHarness], dict[str, Any]]


@pytest.mark.parametrize(
    ("overrides", "step", "oauth_error", "reason"),
    [
        # An audience that is not the issuer of any authorization server.
        (
            lambda d: {"issuer": f"{d.issuer}/oauth2/nope"},
            "token_exchange",
            "invalid_target",
            "invalid_target",
        ),
        # A resource that does not belong to the audience.
        (
            lambda d: {"resource": "http://127.0.0.1:1/mcp"},
            "token_exchange",
            "invalid_target",
            "invalid_target",
        ),
        (
            lambda d: {"scopes": ["employees:admin"]},
            "token_exchange",
            "invalid_scope",
            "invalid_scope",
        ),
        (
            lambda d: {"client_secret": "wrong"},
            "jwt_bearer",
            "invalid_client",
            "invalid_client",
        ),
        (
            lambda d: {"client_id": "nobody-at-employees"},
            "jwt_bearer",
            "invalid_client",
            "invalid_client",
        ),
        # The ID-JAG names employees-eu, but is redeemed at employees.
        (
            lambda d: {"issuer": f"{d.issuer}/oauth2/employees-eu", "scopes": []},
            "jwt_bearer",
            "invalid_grant",
            "invalid_grant",
        ),
    ],
)
async def test_service_devidp_refusal_mapped(
    devidp: DevIdpHarness,
    overrides: Overrides,
    step: str,
    oauth_error: str,
    reason: str,
) -> None:
    """Each rejection by the dev IdP carries its OAuth error, step and reason."""
    auth = employees_auth(devidp, **overrides(devidp))
    async with open_setup(devidp, auth=auth) as setup:
        principal = await setup.sign_in("alice")
        with pytest.raises(ExchangeError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

        assert caught.value.step == step
        assert caught.value.oauth_error == oauth_error
        assert caught.value.reason == reason
        assert len(setup.service.cache) == 0


async def test_service_devidp_other_clients_id_token_reauthentication(
    setup: Setup,
) -> None:
    """An ID token issued to another client means the user must sign in again."""
    id_token = await other_client_id_token(setup.devidp)
    principal = await setup.keep(id_token, grant_id="grant-x")

    with pytest.raises(ExchangeError) as caught:
        await setup.service.credentials_for(
            backend="employees", principal=principal, agent=CURSOR
        )

    assert caught.value.step == "token_exchange"
    assert caught.value.oauth_error == "invalid_grant"
    assert caught.value.reason == "reauthentication_required"


async def test_service_devidp_shared_failure_other_grant_not_ended(
    setup: Setup,
) -> None:
    """A request that joined another grant's failed exchange retries with its own."""
    stale = await setup.keep(
        await other_client_id_token(setup.devidp), grant_id="grant-stale"
    )
    alice = await setup.sign_in("alice", grant_id="grant-alice")
    assert stale.sub == alice.sub
    setup.post_delay = 0.2
    outcomes: dict[str, Any] = {}

    async def request(name: str, principal: Any) -> None:
        try:
            outcomes[name] = await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )
        except ExchangeError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(request, "stale", stale)
        await anyio.sleep(0.05)
        tg.start_soon(request, "alice", alice)

    assert isinstance(outcomes["stale"], ExchangeError)
    assert outcomes["stale"].reason == "reauthentication_required"
    assert not isinstance(outcomes["alice"], ExchangeError)
    assert outcomes["alice"].kind == "id-jag"
    assert setup.count("/oauth2/v1/token") == 2


async def test_service_devidp_unmapped_client_unauthorized_client(
    devidp: DevIdpHarness,
) -> None:
    """A client with no mapping at the backend AS gets ``unauthorized_client``."""
    upstream = UpstreamConfig(
        issuer=devidp.issuer,
        client_id=POST_CLIENT[0],
        client_secret=POST_CLIENT[1],
        token_endpoint_auth_method="client_secret_post",
    )
    async with open_setup(devidp, upstream=upstream) as setup:
        id_token = await other_client_id_token(devidp)
        principal = await setup.keep(id_token, grant_id="g")

        with pytest.raises(ExchangeError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

    assert caught.value.step == "token_exchange"
    assert caught.value.oauth_error == "unauthorized_client"
    assert caught.value.reason == "unauthorized_client"


async def test_service_devidp_idp_stopped_idp_unavailable(
    devidp: DevIdpHarness,
    org_key: SigningKey,
    backend_keys: dict[str, SigningKey],
    assertion_key: SigningKey,
) -> None:
    """An IdP that stops after discovery is an outage with ``retry_after`` 30."""
    sock = bind_socket()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = build_settings(
        issuer, devidp.employees_resource, {"keys": [assertion_key.public_jwk()]}
    )
    app = create_devidp_app(settings, org_key=org_key, backend_keys=backend_keys)
    own = DevIdpHarness(settings, issuer, org_key, devidp.clock, devidp.http)
    upstream = UpstreamConfig(
        issuer=issuer, client_id="agent-proxy", client_secret="agent-proxy-dev-secret"
    )
    async with open_setup(own, upstream=upstream) as setup:
        async with (
            run_app(app, sock=sock),
            httpx.AsyncClient(base_url=issuer, follow_redirects=False) as http,
        ):
            own.http = http
            principal = await setup.sign_in("alice")
            await setup.upstream.token_endpoint()  # discovery, then the IdP stops

        with pytest.raises(UpstreamError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

    assert caught.value.reason == "idp_unavailable"
    assert caught.value.retry_after == 30
    assert getattr(caught.value, "step", None) == "token_exchange"


async def test_service_devidp_as_closed_port_unavailable(devidp: DevIdpHarness) -> None:
    """A backend AS that rejects connections is an outage of that server."""
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    auth = employees_auth(
        devidp, token_endpoint=f"http://127.0.0.1:{port}/oauth2/employees/v1/token"
    )
    async with open_setup(devidp, auth=auth) as setup:
        principal = await setup.sign_in("alice")
        with pytest.raises(UpstreamError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

    assert caught.value.reason == "authorization_server_unavailable"
    assert caught.value.retry_after == 30


async def call_employees(
    backend: RunningApp, headers: dict[str, str]
) -> dict[str, Any]:
    """Call ``list_employees`` with the official MCP client and these headers."""
    with anyio.fail_after(10):
        async with (
            httpx2.AsyncClient(headers=headers, timeout=10.0) as http,
            streamable_http_client(f"{backend.url}/mcp", http_client=http) as (
                read,
                write,
            ),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("list_employees", {})
    assert result.is_error is False
    assert result.structured_content is not None
    return dict(result.structured_content)


def _claims(authorization: str) -> dict[str, Any]:
    return decode_unverified(authorization.removeprefix("Bearer "))[1]
