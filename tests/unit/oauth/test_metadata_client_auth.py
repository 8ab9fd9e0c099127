"""The client authentication the server metadata advertises, and that it holds.

The metadata is parsed with the official MCP SDK's model of RFC 8414
(``mcp.shared.auth.OAuthMetadata``), and every advertised assertion
algorithm is checked against the gateway's own assertion verification.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from mcp.shared.auth import OAuthMetadata

from gateway.oauth.clients import ClientRecord
from gateway.oauth.metadata import authorization_server_metadata
from gateway.oauth.pre_registered import ClientAssertionError, verify_client_assertion
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

ISSUER = "https://gateway.example"
TOKEN_ENDPOINT = f"{ISSUER}/oauth2/token"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa"})
EC_KEYS = {
    "ES256": ECKey.generate_key("P-256", parameters={"kid": "p256"}),
    "ES384": ECKey.generate_key("P-384", parameters={"kid": "p384"}),
    "ES512": ECKey.generate_key("P-521", parameters={"kid": "p521"}),
}


def client() -> ClientRecord:
    keys = [
        RSA.as_dict(private=False),
        *(k.as_dict(private=False) for k in EC_KEYS.values()),
    ]
    return ClientRecord(
        client_id="agent-ci",
        redirect_uris=["https://agent.example/callback"],
        token_endpoint_auth_method="private_key_jwt",
        created_at=0,
        pre_registered=True,
        jwks={"keys": keys},
    )


def assertion(algorithm: str, key: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "agent-ci",
        "sub": "agent-ci",
        "aud": TOKEN_ENDPOINT,
        "iat": now,
        "exp": now + 60,
        "jti": f"{algorithm}-{time.monotonic_ns()}",
    }
    return jwt.encode(
        {"alg": algorithm, "kid": key.kid}, claims, key, algorithms=[algorithm]
    )


def test_metadata_private_key_jwt_parsed_by_sdk() -> None:
    """The SDK's metadata model reads private_key_jwt and its algorithms."""
    metadata = OAuthMetadata.model_validate(authorization_server_metadata(ISSUER))

    assert metadata.token_endpoint_auth_methods_supported == [
        "none",
        "client_secret_post",
        "client_secret_basic",
        "private_key_jwt",
    ]
    assert metadata.revocation_endpoint_auth_methods_supported == (
        metadata.token_endpoint_auth_methods_supported
    )
    algorithms = metadata.token_endpoint_auth_signing_alg_values_supported
    assert algorithms is not None
    assert "none" not in algorithms
    assert not any(algorithm.startswith("HS") for algorithm in algorithms)
    assert metadata.revocation_endpoint_auth_signing_alg_values_supported == algorithms


async def test_metadata_every_listed_algorithm_accepted() -> None:
    """Each advertised algorithm verifies at the token endpoint's check."""
    metadata = authorization_server_metadata(ISSUER)
    store = MemoryStore()
    for algorithm in metadata["token_endpoint_auth_signing_alg_values_supported"]:
        key = EC_KEYS.get(algorithm, RSA)
        await verify_client_assertion(
            store, client(), assertion(algorithm, key), token_endpoint=TOKEN_ENDPOINT
        )


async def test_metadata_unlisted_algorithm_rejected() -> None:
    """An HMAC assertion, which the metadata does not list, is rejected."""
    secret = OctKey.generate_key(256, parameters={"kid": "rsa"})
    with pytest.raises(ClientAssertionError):
        await verify_client_assertion(
            MemoryStore(),
            client(),
            assertion("HS256", secret),
            token_endpoint=TOKEN_ENDPOINT,
        )
