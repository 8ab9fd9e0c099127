"""Client registration metadata and the client registry."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.oauth.clients import (
    ClientRegistry,
    RegistrationError,
    registration_response,
    validate_metadata,
)
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

VALID = {"redirect_uris": ["http://127.0.0.1:3000/cb"], "client_name": "cursor"}


def error_of(metadata: Any) -> RegistrationError:
    with pytest.raises(RegistrationError) as info:
        validate_metadata(metadata)
    return info.value


def test_validate_metadata_defaults_applied() -> None:
    """Without auth method and grant types, RFC 7591 and MCP defaults apply."""
    record = validate_metadata(VALID)
    assert record.token_endpoint_auth_method == "client_secret_basic"
    assert record.grant_types == ["authorization_code", "refresh_token"]
    assert record.client_name == "cursor"
    assert not record.pre_approved


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ([], "invalid_client_metadata"),
        ({}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://a.example/cb"}, "invalid_redirect_uri"),
        ({"redirect_uris": [1]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://a.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://a.example/cb"] * 21}, "invalid_redirect_uri"),
        (
            {**VALID, "token_endpoint_auth_method": "private_key_jwt"},
            "invalid_client_metadata",
        ),
        ({**VALID, "grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({**VALID, "grant_types": ["refresh_token"]}, "invalid_client_metadata"),
        ({**VALID, "grant_types": "authorization_code"}, "invalid_client_metadata"),
        ({**VALID, "response_types": ["token"]}, "invalid_client_metadata"),
        ({**VALID, "client_name": 7}, "invalid_client_metadata"),
        ({**VALID, "client_name": "x" * 201}, "invalid_client_metadata"),
        ({**VALID, "client_name": "bad\nname"}, "invalid_client_metadata"),
    ],
)
def test_validate_metadata_invalid_rejected(metadata: Any, error: str) -> None:
    """Each invalid field gets the RFC 7591 error code."""
    assert error_of(metadata).error == error


def test_validate_metadata_unknown_fields_ignored() -> None:
    """Fields the gateway does not support are ignored, not rejected."""
    record = validate_metadata(
        {**VALID, "logo_uri": "https://x/y.png", "contacts": ["a"]}
    )
    assert record.redirect_uris == VALID["redirect_uris"]


async def test_register_confidential_client_stores_only_hash() -> None:
    """A confidential client gets a secret that the store never holds."""
    store = MemoryStore()
    registry = ClientRegistry(store)
    record, secret = await registry.register(
        {**VALID, "token_endpoint_auth_method": "client_secret_post"}
    )
    assert secret is not None
    raw = await store.get("client", record.client_id)
    assert raw is not None
    assert secret.encode() not in raw
    stored = await registry.get(record.client_id)
    assert stored is not None
    assert stored.check_secret(secret)
    assert not stored.check_secret(secret + "x")
    body = registration_response(record, secret)
    assert body["client_secret"] == secret
    assert body["client_secret_expires_at"] == 0


async def test_register_public_client_has_no_secret() -> None:
    """A public client gets no secret and cannot match one."""
    registry = ClientRegistry(MemoryStore())
    record, secret = await registry.register(
        {**VALID, "token_endpoint_auth_method": "none"}
    )
    assert secret is None
    assert record.is_public
    assert not record.check_secret("")
    assert "client_secret" not in registration_response(record, None)


async def test_register_client_ids_differ() -> None:
    """Every registration gets a new random client id."""
    registry = ClientRegistry(MemoryStore())
    first, _ = await registry.register(VALID)
    second, _ = await registry.register(VALID)
    assert first.client_id != second.client_id
    assert len(first.client_id) >= 32
