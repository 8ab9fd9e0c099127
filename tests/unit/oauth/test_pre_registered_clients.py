"""Pre-registered clients in the registry, their key files, and upstream choice."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest
from joserfc.jwk import RSAKey

from gateway.config import UpstreamConfig
from gateway.config.model import OAuthClientConfig
from gateway.errors import ExchangeError
from gateway.oauth.clients import ClientRecord, ClientRegistry
from gateway.oauth.pre_registered import read_client_jwks
from gateway.oauth.upstream import UpstreamClient
from gateway.oauth.upstream_clients import (
    UnknownUpstreamClientError,
    UpstreamClients,
)
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

SECRET = "s" * 40
CALLBACK = "http://127.0.0.1:33418/callback"


def configured(**changes: object) -> OAuthClientConfig:
    fields: dict[str, object] = {"redirect_uris": [CALLBACK], "client_secret": SECRET}
    fields.update(changes)
    return msgspec.convert(fields, OAuthClientConfig)


async def test_load_pre_registered_stores_records_without_ttl() -> None:
    """Configured clients are stored as pre-registered and never expire."""
    registry = ClientRegistry(MemoryStore())
    await registry.load_pre_registered({"desk": configured(client_name="cursor")})

    record = await registry.get("desk")

    assert record is not None
    assert record.pre_registered
    assert record.ttl is None
    assert record.client_name == "cursor"
    assert record.check_secret(SECRET)
    assert record.secret_hash != SECRET
    assert record.identity_proven


async def test_load_pre_registered_public_client_not_proven() -> None:
    """A public pre-registered client cannot prove its identity."""
    registry = ClientRegistry(MemoryStore())
    public = configured(token_endpoint_auth_method="none", client_secret="")
    await registry.load_pre_registered({"pub": public})

    record = await registry.get("pub")

    assert record is not None
    assert record.is_public
    assert not record.identity_proven


async def test_load_pre_registered_removed_client_deleted() -> None:
    """A client dropped from the config is gone after the next start."""
    store = MemoryStore()
    await ClientRegistry(store).load_pre_registered(
        {"keep": configured(), "drop": configured()}
    )
    registry = ClientRegistry(store)
    await registry.load_pre_registered({"keep": configured()})

    assert await registry.get("keep") is not None
    assert await registry.get("drop") is None


async def test_registered_client_confidential_not_proven() -> None:
    """A dynamically registered confidential client is not verified by its secret."""
    record, secret = await ClientRegistry(MemoryStore()).register(
        {
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "client_secret_basic",
        }
    )

    assert secret is not None
    assert not record.pre_registered
    assert not record.identity_proven


async def test_registry_flood_of_registrations_keeps_pre_registered() -> None:
    """The per-namespace bound evicts registered clients, never configured ones."""
    store = MemoryStore(max_entries=5)
    registry = ClientRegistry(store)
    await registry.load_pre_registered({"desk": configured()})
    for index in range(20):
        await registry.save(
            ClientRecord(
                client_id=f"dcr-{index}",
                redirect_uris=[CALLBACK],
                created_at=0,
                ttl=60,
            )
        )

    assert await registry.get("desk") is not None
    assert await registry.get("dcr-0") is None


def test_read_client_jwks_public_set_accepted(tmp_path: Path) -> None:
    """A public JWK Set file is read for a private_key_jwt client."""
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    path = tmp_path / "jwks.json"
    path.write_bytes(msgspec.json.encode({"keys": [key.as_dict(private=False)]}))
    client = configured(
        token_endpoint_auth_method="private_key_jwt",
        client_secret="",
        jwks_file=str(path),
    )

    sets = read_client_jwks({"pk": client, "secret": configured()})

    assert list(sets) == ["pk"]
    assert sets["pk"]["keys"][0]["kid"] == "k1"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file"),
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"keys": []}', "non-empty 'keys'"),
        (b"private", "public RSA or EC keys only"),
    ],
    ids=["missing", "not-json", "not-object", "no-keys", "private-key"],
)
def test_read_client_jwks_unusable_file_names_key(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    """An unusable key file fails start-up naming the YAML key and file."""
    path = tmp_path / "jwks.json"
    if content == b"private":
        key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        content = msgspec.json.encode({"keys": [key.as_dict(private=True)]})
    if content is not None:
        path.write_bytes(content)
    client = configured(
        token_endpoint_auth_method="private_key_jwt",
        client_secret="",
        jwks_file=str(path),
    )

    with pytest.raises(ValueError, match=r"oauth\.clients\.pk\.jwks_file: ") as info:
        read_client_jwks({"pk": client})

    assert problem in str(info.value)


async def test_upstream_clients_unknown_client_refresh_invalid_grant() -> None:
    """Refreshing through a client no agent has ends the sign-in (invalid_grant)."""
    async with httpx.AsyncClient() as http:
        gateway = UpstreamClient(
            UpstreamConfig(issuer="http://127.0.0.1:1", client_id="agent-proxy"),
            redirect_uri=CALLBACK,
            http=http,
        )
        clients = UpstreamClients(gateway)
        with pytest.raises(UnknownUpstreamClientError):
            clients.get("gone-agent")
        with pytest.raises(ExchangeError) as info:
            await clients.refresh("refresh-token", client_id="gone-agent")

    assert info.value.oauth_error == "invalid_grant"
    assert clients.get(None) is gateway


async def test_upstream_client_refresh_of_other_client_refused() -> None:
    """One upstream client never sends another client's refresh token."""
    async with httpx.AsyncClient() as http:
        client = UpstreamClient(
            UpstreamConfig(issuer="http://127.0.0.1:1", client_id="agent-proxy"),
            redirect_uri=CALLBACK,
            http=http,
        )
        with pytest.raises(Exception, match="cursor-agent") as info:
            await client.refresh("refresh-token", client_id="cursor-agent")

    assert getattr(info.value, "reason", None) == "idp_misconfigured"
