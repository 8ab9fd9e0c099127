"""Pre-registered clients (``oauth.clients``) at the gateway's token endpoint.

The demo stack runs on loopback with the real dev IdP. Its config adds a
public client and a ``private_key_jwt`` client to the demo's confidential
``cursor-desktop``, and lists all three in ``agents.cursor.match.client_ids``.
Requests are raw httpx; a browser driver follows the sign-in.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from _identity_support import (
    AGENT_UPSTREAM_CLIENT,
    VERIFIED_CLIENT,
    VERIFIED_SECRET,
    Authorization,
    authorize,
    grant_of,
    identity_stack,
    jwt_claims,
    redeem,
    with_cursor_client_ids,
    with_oauth_clients,
)
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.config import GatewayConfig
from gateway.demo.driver import REDIRECT_URI
from gateway.demo.runner import DemoStack
from gateway.exchange.client_assertion import ClientAssertionSigner
from gateway.oauth.clients import ClientRecord, ClientRegistry
from gateway.oauth.pre_registered import CLIENT_ASSERTION_TYPE

pytestmark = pytest.mark.anyio

PUBLIC_CLIENT = "cursor-public"
PKJWT_CLIENT = "cursor-pkjwt"
NO_REFRESH_CLIENT = "cursor-no-refresh"
KEY_ID = "cursor-pkjwt-key"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def client_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": KEY_ID})


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, client_key: RSAKey
) -> AsyncIterator[DemoStack]:
    """The demo stack with three more pre-registered clients."""
    var_dir = tmp_path_factory.mktemp("pre-registered")
    jwks_file = var_dir / "cursor-pkjwt.jwks.json"
    jwks_file.write_bytes(
        msgspec.json.encode({"keys": [client_key.as_dict(private=False)]})
    )

    def edit(config: GatewayConfig) -> GatewayConfig:
        config = with_oauth_clients(
            config,
            {
                PUBLIC_CLIENT: {
                    "client_name": "cursor",
                    "redirect_uris": [REDIRECT_URI],
                    "token_endpoint_auth_method": "none",
                },
                PKJWT_CLIENT: {
                    "redirect_uris": [REDIRECT_URI],
                    "token_endpoint_auth_method": "private_key_jwt",
                    "jwks_file": str(jwks_file),
                },
                NO_REFRESH_CLIENT: {
                    "redirect_uris": [REDIRECT_URI],
                    "client_secret": "n" * 40,
                    "grant_types": ["authorization_code"],
                },
            },
        )
        return with_cursor_client_ids(
            config, [VERIFIED_CLIENT, PUBLIC_CLIENT, PKJWT_CLIENT, NO_REFRESH_CLIENT]
        )

    async with identity_stack(var_dir, edit) as running:
        yield running


def token_endpoint(stack: DemoStack) -> str:
    return stack.urls["gateway"] + "/oauth2/token"


def assertion(key: RSAKey, claims: dict[str, Any]) -> str:
    return jwt.encode({"alg": "RS256", "kid": KEY_ID}, claims, key)


def assertion_claims(stack: DemoStack, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": PKJWT_CLIENT,
        "sub": PKJWT_CLIENT,
        "aud": token_endpoint(stack),
        "iat": now,
        "exp": now + 60,
        "jti": f"jti-{time.monotonic_ns()}",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def assertion_form(client_assertion: str) -> dict[str, str]:
    return {
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": client_assertion,
    }


async def test_preregistered_client_basic_secret_verified_agent(
    stack: DemoStack,
) -> None:
    """cursor-desktop with its secret gets a verified cursor token."""
    response = await redeem(
        stack,
        await authorize(stack, VERIFIED_CLIENT),
        VERIFIED_CLIENT,
        secret=VERIFIED_SECRET,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    agent = jwt_claims(body["access_token"])["agent"]
    assert agent == {"id": "cursor", "verified": True, "trust": "verified"}
    assert "refresh_token" in body
    grant = await grant_of(stack, body["access_token"])
    assert grant.upstream_client_id == AGENT_UPSTREAM_CLIENT


async def test_preregistered_client_post_secret_accepted(stack: DemoStack) -> None:
    """The secret may also come in the form (client_secret_post)."""
    response = await redeem(
        stack,
        await authorize(stack, VERIFIED_CLIENT),
        VERIFIED_CLIENT,
        extra={"client_id": VERIFIED_CLIENT, "client_secret": VERIFIED_SECRET},
    )

    assert response.status_code == 200, response.text


async def test_preregistered_client_wrong_secret_not_verified(
    stack: DemoStack,
) -> None:
    """A listed client that fails to authenticate gets no token at all."""
    authorization = await authorize(stack, VERIFIED_CLIENT)
    wrong = await redeem(
        stack, authorization, VERIFIED_CLIENT, secret="not-the-secret" * 3
    )
    missing = await redeem(stack, authorization, VERIFIED_CLIENT)

    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert missing.status_code == 401
    assert missing.json()["error"] == "invalid_client"


async def test_preregistered_public_client_listed_self_asserted(
    stack: DemoStack,
) -> None:
    """A listed public client proves nothing: self-asserted, gateway's client."""
    response = await redeem(stack, await authorize(stack, PUBLIC_CLIENT), PUBLIC_CLIENT)

    assert response.status_code == 200, response.text
    access_token = response.json()["access_token"]
    agent = jwt_claims(access_token)["agent"]
    assert agent == {"id": "cursor", "verified": False, "trust": "self-asserted"}
    grant = await grant_of(stack, access_token)
    assert grant.upstream_client_id is None
    assert jwt_claims(grant.upstream_id_token)["aud"] == "agent-proxy"


async def test_preregistered_client_without_refresh_grant_no_refresh_token(
    stack: DemoStack,
) -> None:
    """grant_types without refresh_token yields an access token only."""
    response = await redeem(
        stack,
        await authorize(stack, NO_REFRESH_CLIENT),
        NO_REFRESH_CLIENT,
        secret="n" * 40,
    )

    assert response.status_code == 200, response.text
    assert "refresh_token" not in response.json()


async def test_dcr_naming_preregistered_id_gets_new_id(stack: DemoStack) -> None:
    """Registration ignores a client_id in the body; the configured one stays."""
    async with httpx.AsyncClient(base_url=stack.urls["gateway"]) as http:
        registered = await http.post(
            "/oauth2/register",
            json={
                "client_id": VERIFIED_CLIENT,
                "client_name": "cursor",
                "redirect_uris": [REDIRECT_URI],
                "token_endpoint_auth_method": "client_secret_basic",
            },
        )

    assert registered.status_code == 201, registered.text
    assert registered.json()["client_id"] != VERIFIED_CLIENT
    record = await ClientRegistry(stack.gateway.runtime.store).get(VERIFIED_CLIENT)
    assert record is not None
    assert record.pre_registered
    assert record.check_secret(VERIFIED_SECRET)


async def test_registry_registered_record_cannot_shadow_preregistered(
    stack: DemoStack,
) -> None:
    """A registered record under a configured id is never returned."""
    registry = ClientRegistry(stack.gateway.runtime.store)
    await registry.save(
        ClientRecord(
            client_id=VERIFIED_CLIENT,
            client_name="intruder",
            redirect_uris=["https://attacker.example/cb"],
            created_at=0,
            ttl=3600,
        )
    )

    record = await registry.get(VERIFIED_CLIENT)

    assert record is not None
    assert record.pre_registered
    assert record.client_name == "cursor"


async def test_dcr_confidential_client_listed_self_asserted(
    stack: DemoStack,
) -> None:
    """A dynamically registered client is self-asserted even when listed by id."""
    async with httpx.AsyncClient(base_url=stack.urls["gateway"]) as http:
        registered = (
            await http.post(
                "/oauth2/register",
                json={
                    "client_name": "not-cursor",
                    "redirect_uris": [REDIRECT_URI],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
            )
        ).json()
    agents = stack.gateway.runtime.agents
    original = agents.config
    agents.config = with_cursor_client_ids(original, [registered["client_id"]])
    try:
        authorization = await authorize(stack, registered["client_id"])
    finally:
        agents.config = original
    response = await redeem(
        stack,
        authorization,
        registered["client_id"],
        secret=registered["client_secret"],
    )

    assert response.status_code == 200, response.text
    access_token = response.json()["access_token"]
    agent = jwt_claims(access_token)["agent"]
    assert agent == {"id": "cursor", "verified": False, "trust": "self-asserted"}
    assert (await grant_of(stack, access_token)).upstream_client_id is None


async def test_private_key_jwt_client_verified_agent(
    stack: DemoStack, client_key: RSAKey
) -> None:
    """An assertion signed with the configured key makes cursor verified."""
    signer = ClientAssertionSigner(client_key, kid=KEY_ID, algorithm="RS256")
    form = assertion_form(signer.assertion(PKJWT_CLIENT, token_endpoint(stack)))
    response = await redeem(
        stack, await authorize(stack, PKJWT_CLIENT), PKJWT_CLIENT, extra=form
    )

    assert response.status_code == 200, response.text
    access_token = response.json()["access_token"]
    agent = jwt_claims(access_token)["agent"]
    assert agent == {"id": "cursor", "verified": True, "trust": "verified"}
    grant = await grant_of(stack, access_token)
    assert grant.upstream_client_id == AGENT_UPSTREAM_CLIENT


async def test_private_key_jwt_replayed_assertion_rejected(
    stack: DemoStack, client_key: RSAKey
) -> None:
    """A client assertion works once: its jti is remembered until it expires."""
    form = assertion_form(assertion(client_key, assertion_claims(stack)))
    first = await redeem(
        stack, await authorize(stack, PKJWT_CLIENT), PKJWT_CLIENT, extra=form
    )
    replay = await redeem(
        stack, await authorize(stack, PKJWT_CLIENT), PKJWT_CLIENT, extra=form
    )

    assert first.status_code == 200, first.text
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"
    assert "already used" in replay.json()["error_description"]


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"aud": "http://127.0.0.1:1/oauth2/token"}, "aud"),
        ({"iss": VERIFIED_CLIENT}, "private_key_jwt"),
        ({"sub": "someone-else"}, "iss and sub"),
        ({"exp": int(time.time()) + 3600}, "expire within"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"jti": None}, "jti"),
    ],
    ids=["wrong-aud", "secret-client", "wrong-sub", "long-exp", "expired", "no-jti"],
)
async def test_private_key_jwt_bad_assertion_invalid_client(
    stack: DemoStack, client_key: RSAKey, changes: dict[str, Any], detail: str
) -> None:
    """Each failed assertion check is invalid_client naming the check."""
    claims = assertion_claims(stack, **changes)
    form = assertion_form(assertion(client_key, claims))
    authorization = Authorization(code="unused", verifier="unused")
    response = await redeem(stack, authorization, claims["iss"], extra=form)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert detail in response.json()["error_description"]


async def test_private_key_jwt_other_key_rejected(stack: DemoStack) -> None:
    """An assertion signed by a key outside the configured set is rejected."""
    other = RSAKey.generate_key(2048, parameters={"kid": KEY_ID})
    form = assertion_form(assertion(other, assertion_claims(stack)))
    response = await redeem(
        stack, Authorization(code="unused", verifier="unused"), PKJWT_CLIENT, extra=form
    )

    assert response.status_code == 401
    assert "signature" in response.json()["error_description"]


async def test_private_key_jwt_with_secret_too_rejected(
    stack: DemoStack, client_key: RSAKey
) -> None:
    """An assertion plus a client secret is two methods: invalid_request."""
    form = assertion_form(assertion(client_key, assertion_claims(stack)))
    form["client_secret"] = "x" * 40
    response = await redeem(
        stack, Authorization(code="unused", verifier="unused"), PKJWT_CLIENT, extra=form
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_private_key_jwt_client_secret_instead_rejected(
    stack: DemoStack,
) -> None:
    """A private_key_jwt client cannot authenticate with a secret."""
    response = await redeem(
        stack,
        Authorization(code="unused", verifier="unused"),
        PKJWT_CLIENT,
        secret="x" * 40,
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
