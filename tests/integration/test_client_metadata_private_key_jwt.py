"""Client ID Metadata Document clients that authenticate with ``private_key_jwt``.

The demo stack (dev IdP, both backends, gateway) runs on loopback with
``oauth.client_metadata.allow_loopback``, its development setting, so the
gateway fetches documents and ``jwks_uri`` sets over plain http from a
loopback document server the test starts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _identity_support import authorize, identity_stack, redeem
from joserfc import jwt
from joserfc.jwk import ECKey
from tests.integration._client_documents import DocumentServer, Reply, serve_documents

from gateway.config import GatewayConfig
from gateway.demo.driver import REDIRECT_URI
from gateway.demo.runner import DemoStack
from gateway.oauth.client_metadata import ClientMetadataError, ClientMetadataResolver
from gateway.oauth.pre_registered import CLIENT_ASSERTION_TYPE
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

KEY = ECKey.generate_key("P-256", parameters={"kid": "agent-1"})
OTHER_KEY = ECKey.generate_key("P-256", parameters={"kid": "agent-1"})
PUBLIC_SET = {"keys": [KEY.as_dict(private=False)]}


def allow_loopback_documents(config: GatewayConfig) -> GatewayConfig:
    documents = msgspec.structs.replace(
        config.oauth.client_metadata, allow_loopback=True
    )
    oauth = msgspec.structs.replace(config.oauth, client_metadata=documents)
    return msgspec.structs.replace(config, oauth=oauth)


@pytest.fixture
async def documents(tmp_path: Path) -> AsyncIterator[DocumentServer]:
    async with serve_documents(str(tmp_path), tls=False) as server:
        yield server


def publish_client(documents: DocumentServer, path: str, **fields: Any) -> str:
    """Serve a private_key_jwt client document at ``path``; return its URL."""
    url = documents.url + path
    body = {
        "client_id": url,
        "client_name": "cursor",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "private_key_jwt",
        **fields,
    }
    documents.replies[path] = Reply(msgspec.json.encode(body))
    return url


def assertion_form(stack: DemoStack, client_id: str, key: ECKey) -> dict[str, str]:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": stack.urls["gateway"] + "/oauth2/token",
        "iat": now,
        "exp": now + 60,
        "jti": f"jti-{time.monotonic_ns()}",
    }
    assertion = jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)
    return {
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }


@pytest.mark.parametrize("source", ["jwks_uri", "jwks"])
async def test_document_private_key_jwt_token_issued(
    tmp_path: Path, documents: DocumentServer, source: str
) -> None:
    """An assertion signed with the document's key redeems the code."""
    if source == "jwks_uri":
        documents.replies["/agent/jwks.json"] = Reply(msgspec.json.encode(PUBLIC_SET))
        keys: dict[str, Any] = {"jwks_uri": documents.url + "/agent/jwks.json"}
    else:
        keys = {"jwks": PUBLIC_SET}
    client_id = publish_client(documents, "/agent/client.json", **keys)
    async with identity_stack(tmp_path, allow_loopback_documents) as stack:
        code = await authorize(stack, client_id)
        response = await redeem(
            stack, code, client_id, extra=assertion_form(stack, client_id, KEY)
        )

    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_document_private_key_jwt_other_key_rejected(
    tmp_path: Path, documents: DocumentServer
) -> None:
    """An assertion signed with another key, or none at all, gets invalid_client."""
    client_id = publish_client(documents, "/agent/client.json", jwks=PUBLIC_SET)
    async with identity_stack(tmp_path, allow_loopback_documents) as stack:
        code = await authorize(stack, client_id)
        forged = await redeem(
            stack, code, client_id, extra=assertion_form(stack, client_id, OTHER_KEY)
        )
        bare = await redeem(stack, code, client_id)
        accepted = await redeem(
            stack, code, client_id, extra=assertion_form(stack, client_id, KEY)
        )

    assert forged.status_code == 401
    assert forged.json()["error"] == "invalid_client"
    assert bare.status_code == 401
    assert bare.json()["error"] == "invalid_client"
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "exactly one of jwks and jwks_uri"),
        ({"jwks": PUBLIC_SET, "jwks_uri": "x"}, "exactly one of jwks and jwks_uri"),
        ({"jwks": {"keys": [KEY.as_dict(private=True)]}}, "public RSA or EC keys"),
        ({"jwks_uri": "/missing.json"}, "HTTP 404"),
        ({"jwks_uri": "https://10.0.0.1/jwks.json"}, "private, loopback"),
    ],
    ids=["no-keys", "both", "private-key", "uri-404", "private-address"],
)
async def test_document_private_key_jwt_bad_keys_invalid(
    documents: DocumentServer, fields: dict[str, Any], problem: str
) -> None:
    """A document without one usable public key set is refused, with the reason."""
    if fields.get("jwks_uri", "").startswith("/"):
        fields = {"jwks_uri": documents.url + fields["jwks_uri"]}
    client_id = publish_client(documents, "/bad/client.json", **fields)
    resolver = ClientMetadataResolver(MemoryStore(), allow_loopback=True)

    with pytest.raises(ClientMetadataError) as caught:
        await resolver.resolve(client_id)

    assert problem in caught.value.description
