"""Edge cases of the token and revocation endpoints found by a hostile review.

The servers are those of the flow tests: the gateway's OAuth front door and
the dev IdP with uvicorn on loopback. Tests that need per-tool scopes swap
the runtime's config for one with ``stages.authorize.tool_scopes``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest
from tests.integration import test_oauth_flow
from tests.integration.test_oauth_flow import Gateway

from gateway.oauth.access_tokens import mint_access_token
from gateway.oauth.revoked_tokens import is_access_token_revoked

pytestmark = pytest.mark.anyio

servers = test_oauth_flow.servers
gateway = test_oauth_flow.gateway

ADMIN = "employees:admin"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def scoped(gateway: Gateway) -> Iterator[Gateway]:
    """The gateway with the tool scope ``employees:admin`` configured."""
    runtime = gateway.runtime
    original = runtime.config
    stages = {
        **original.stages,
        "authorize": {"tool_scopes": {"employees": {"update_salary": [ADMIN]}}},
    }
    runtime.config = msgspec.structs.replace(original, stages=stages)
    yield gateway
    runtime.config = original


async def test_refresh_narrowed_scope_keeps_refresh_token_scope(
    scoped: Gateway,
) -> None:
    """A refresh with a narrower scope leaves the next refresh token's scope whole."""
    client = await scoped.register("cursor")
    sign_in = await scoped.sign_in(client, scope=f"mcp {ADMIN}")
    first = (await scoped.redeem(client, sign_in)).json()
    assert first["scope"] == f"mcp {ADMIN}"

    narrowed = await scoped.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client["client_id"],
            "scope": "mcp",
        }
    )
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scope"] == "mcp"
    widened = await scoped.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": narrowed.json()["refresh_token"],
            "client_id": client["client_id"],
            "scope": f"mcp {ADMIN}",
        }
    )
    plain = await scoped.refresh(client, widened.json()["refresh_token"])

    assert widened.status_code == 200, widened.text
    assert widened.json()["scope"] == f"mcp {ADMIN}"
    assert plain.status_code == 200, plain.text
    assert plain.json()["scope"] == f"mcp {ADMIN}"


async def test_refresh_scope_beyond_grant_invalid_scope(scoped: Gateway) -> None:
    """A refresh cannot ask for a scope the sign-in never granted."""
    client = await scoped.register("cursor")
    first = (await scoped.redeem(client, await scoped.sign_in(client))).json()
    response = await scoped.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client["client_id"],
            "scope": f"mcp {ADMIN}",
        }
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


async def revoke_expired(gateway: Gateway, seconds_ago: int) -> str:
    """Revoke an access token whose exp passed ``seconds_ago``; return its jti."""
    client = await gateway.register("cursor")
    tokens = (await gateway.redeem(client, await gateway.sign_in(client))).json()
    _, claims = gateway.runtime.keys.verify(
        tokens["access_token"], algorithms=["ES256"]
    )
    grant = await gateway.runtime.grants.get(claims["grant_id"])
    assert grant is not None
    # A token that expired a moment ago: minted with the gateway's own keys,
    # because waiting for a real token to expire would take its whole lifetime.
    expired, expired_claims = mint_access_token(
        gateway.runtime.keys,
        issuer=gateway.url,
        grant=grant,
        scopes=["mcp"],
        ttl=1,
        now=int(time.time()) - seconds_ago - 1,
    )
    response = await gateway.browser.post(
        "/oauth2/revoke",
        data={"token": expired, "client_id": client["client_id"]},
    )
    assert response.status_code == 200, response.text
    token_id: str = expired_claims["jti"]
    return token_id


async def test_revoke_access_token_expired_within_leeway_recorded(
    gateway: Gateway,
) -> None:
    """A token just past exp is still recorded, as leeway would accept it."""
    token_id = await revoke_expired(gateway, seconds_ago=5)
    assert await is_access_token_revoked(gateway.runtime.store, token_id)


async def test_revoke_access_token_expired_beyond_leeway_not_recorded(
    gateway: Gateway,
) -> None:
    """A token expired longer ago than any leeway needs no record."""
    token_id = await revoke_expired(gateway, seconds_ago=400)
    assert not await is_access_token_revoked(gateway.runtime.store, token_id)


@pytest.mark.parametrize(
    "authorization", ["Bearer abc", "Digest username=x", "basic", "Negotiate"]
)
async def test_token_non_basic_authorization_basic_challenge(
    gateway: Gateway, authorization: str
) -> None:
    """A 401 after any Authorization header carries a Basic challenge."""
    response = await gateway.browser.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        headers={"authorization": authorization},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_token_basic_empty_client_id_basic_challenge(gateway: Gateway) -> None:
    """Basic credentials with an empty client id get a 401 Basic challenge."""
    response = await gateway.browser.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        auth=("", "secret"),
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_revoke_non_basic_authorization_basic_challenge(
    gateway: Gateway,
) -> None:
    """The revocation endpoint challenges a non-Basic header the same way."""
    response = await gateway.browser.post(
        "/oauth2/revoke",
        data={"token": "x"},
        headers={"authorization": "Bearer abc"},
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_token_public_client_without_header_no_challenge(
    gateway: Gateway,
) -> None:
    """A 401 to a request that sent no Authorization header has no challenge."""
    response = await gateway.browser.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": "unknown-client",
        },
    )
    assert response.status_code == 401
    assert "www-authenticate" not in response.headers
