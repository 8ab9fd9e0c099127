"""The per-client token bucket for requests that authenticate with an assertion.

A ``private_key_jwt`` token request may name its client only in the client
assertion. The gateway runs with uvicorn on an ephemeral loopback port and
small limits, with one pre-registered ``private_key_jwt`` client. The
requests come from different forwarded addresses, so only the per-client
bucket can reject them. Only assertions that verify spend that bucket.
"""

from __future__ import annotations

import pathlib
import time

import httpx
import msgspec
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from tests.integration.test_oauth_ratelimit import SMALL_LIMITS, running_gateway

from gateway.oauth.pre_registered import CLIENT_ASSERTION_TYPE

pytestmark = pytest.mark.anyio

KEY = ECKey.generate_key("P-256")
FORGER = ECKey.generate_key("P-256")
CLIENT_ID = "busy-client"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def clients(tmp_path: pathlib.Path) -> dict[str, object]:
    """``oauth.clients`` with one ``private_key_jwt`` client holding ``KEY``."""
    jwks_file = tmp_path / "busy-client.jwks.json"
    jwks_file.write_bytes(msgspec.json.encode({"keys": [KEY.as_dict(private=False)]}))
    return {
        CLIENT_ID: {
            "client_name": "cursor",
            "redirect_uris": ["http://127.0.0.1:5555/callback"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_file": str(jwks_file),
        }
    }


def assertion_form(token_endpoint: str, key: ECKey) -> dict[str, str]:
    """A refresh request authenticated only by a client assertion signed by ``key``."""
    now = int(time.time())
    claims = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": token_endpoint,
        "iat": now,
        "exp": now + 60,
        "jti": f"jti-{time.monotonic_ns()}",
    }
    assertion = jwt.encode({"alg": "ES256"}, claims, key)
    return {
        "grant_type": "refresh_token",
        "refresh_token": "no-such-token",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }


async def post(http: httpx.AsyncClient, key: ECKey, address: str) -> httpx.Response:
    endpoint = f"{http.base_url}".rstrip("/") + "/oauth2/token"
    return await http.post(
        "/oauth2/token",
        data=assertion_form(endpoint, key),
        headers={"x-forwarded-for": address},
    )


async def test_token_assertion_without_client_id_limited(
    tmp_path: pathlib.Path,
) -> None:
    """Verified assertions for one client are limited per client."""
    async with running_gateway(tmp_path, SMALL_LIMITS, clients=clients(tmp_path)) as (
        http
    ):
        statuses = [
            (await post(http, KEY, f"198.51.100.{index + 1}")).status_code
            for index in range(3)
        ]
        limited = await post(http, KEY, "198.51.100.20")

    assert statuses == [400, 400, 400]
    assert limited.status_code == 429
    assert "from this client" in limited.json()["error_description"]


async def test_token_forged_assertions_spare_client_bucket(
    tmp_path: pathlib.Path,
) -> None:
    """Assertions that do not verify never spend the named client's bucket."""
    async with running_gateway(tmp_path, SMALL_LIMITS, clients=clients(tmp_path)) as (
        http
    ):
        forged = [
            (await post(http, FORGER, f"198.51.100.{index + 1}")).status_code
            for index in range(4)
        ]
        real = await post(http, KEY, "198.51.100.20")

    assert forged == [401] * 4
    assert real.status_code == 400
    assert real.json()["error"] == "invalid_grant"
