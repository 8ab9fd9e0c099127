"""The ``nbf`` check of ``private_key_jwt`` client assertions (RFC 7523 section 3)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.oauth.clients import ClientRecord
from gateway.oauth.pre_registered import (
    ASSERTION_LEEWAY,
    ClientAssertionError,
    verify_client_assertion,
)
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

ENDPOINT = "https://gw.example/oauth2/token"
KEY = ECKey.generate_key("P-256")
CLIENT = ClientRecord(
    client_id="desk",
    redirect_uris=["https://desk.example/cb"],
    token_endpoint_auth_method="private_key_jwt",
    created_at=0,
    pre_registered=True,
    jwks={"keys": [KEY.as_dict(private=False)]},
)


def assertion(now: float, **claims: Any) -> str:
    body: dict[str, Any] = {
        "iss": "desk",
        "sub": "desk",
        "aud": ENDPOINT,
        "exp": int(now) + 60,
        "jti": f"jti-{time.monotonic_ns()}",
    }
    body.update(claims)
    return jwt.encode({"alg": "ES256"}, body, KEY)


@pytest.mark.parametrize("ahead", [ASSERTION_LEEWAY + 1, 250])
async def test_assertion_nbf_in_future_rejected(ahead: int) -> None:
    """An assertion not valid until after the leeway is rejected."""
    now = time.time()
    with pytest.raises(ClientAssertionError, match="nbf"):
        await verify_client_assertion(
            MemoryStore(),
            CLIENT,
            assertion(now, nbf=int(now) + ahead),
            token_endpoint=ENDPOINT,
            now=now,
        )


@pytest.mark.parametrize("nbf", ["soon", True, [1]])
async def test_assertion_nbf_not_number_rejected(nbf: object) -> None:
    """An nbf that is present but not a number is rejected."""
    now = time.time()
    with pytest.raises(ClientAssertionError, match="nbf"):
        await verify_client_assertion(
            MemoryStore(),
            CLIENT,
            assertion(now, nbf=nbf),
            token_endpoint=ENDPOINT,
            now=now,
        )


@pytest.mark.parametrize("offset", [-60, 0, ASSERTION_LEEWAY - 1])
async def test_assertion_nbf_within_leeway_accepted(offset: int) -> None:
    """An nbf in the past, now, or within the leeway ahead is accepted."""
    now = time.time()
    await verify_client_assertion(
        MemoryStore(),
        CLIENT,
        assertion(now, nbf=int(now) + offset),
        token_endpoint=ENDPOINT,
        now=now,
    )
