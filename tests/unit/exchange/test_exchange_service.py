"""The credential service: static kinds, grant failures and an unreachable IdP.

The ID-JAG flow against a real IdP is in
``tests/integration/test_exchange_devidp.py``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import msgspec
import pytest

from gateway.errors import ExchangeError, UpstreamError
from gateway.exchange.idjag import ServerUnavailableError
from gateway.exchange.service import CredentialService
from gateway.oauth.grants import GrantStore
from gateway.store import MemoryStore
from tests.unit.exchange.support import (
    ALICE,
    CURSOR,
    FixedUpstream,
    NoRefresh,
    closed_port,
    gateway_config,
    save_alice_grant,
)

pytestmark = pytest.mark.anyio


async def grant_store() -> GrantStore:
    grants = GrantStore(MemoryStore(), NoRefresh())
    await save_alice_grant(grants)
    return grants


@pytest.fixture
async def service() -> AsyncIterator[CredentialService]:
    upstream = FixedUpstream(f"http://127.0.0.1:{closed_port()}/oauth2/v1/token")
    service = CredentialService(
        gateway_config(), grants=await grant_store(), upstream=upstream, timeout=2.0
    )
    yield service
    await service.aclose()


async def test_service_static_key_header_with_prefix(
    service: CredentialService,
) -> None:
    """``static-key`` sends prefix and value in the configured header."""
    partners = await service.credentials_for(
        backend="partners", principal=ALICE, agent=CURSOR
    )
    bearer = await service.credentials_for(
        backend="bearer", principal=ALICE, agent=CURSOR
    )

    assert partners.headers == {"x-api-key": "partners-key"}
    assert partners.kind == "static-key"
    assert partners.cache is None
    assert bearer.headers == {"authorization": "Bearer s3cret"}


async def test_service_basic_utf8_authorization(service: CredentialService) -> None:
    """``basic`` sends RFC 7617 credentials, UTF-8 before base64."""
    credentials = await service.credentials_for(
        backend="legacy", principal=ALICE, agent=CURSOR
    )

    scheme, _, encoded = credentials.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode("utf-8") == "gateway:pässword"
    assert credentials.kind == "basic"


async def test_service_none_no_headers(service: CredentialService) -> None:
    """``none`` adds no header at all."""
    credentials = await service.credentials_for(
        backend="open", principal=ALICE, agent=CURSOR
    )

    assert credentials.headers == {}
    assert credentials.kind == "none"


async def test_service_unknown_backend_lookup_error(
    service: CredentialService,
) -> None:
    """A backend missing from the config is named in the error."""
    with pytest.raises(LookupError, match="'nope' is not configured"):
        await service.credentials_for(backend="nope", principal=ALICE, agent=CURSOR)


async def test_service_ended_grant_reauthentication_required(
    service: CredentialService,
) -> None:
    """A grant that is gone means the user must sign in again."""
    principal = msgspec.structs.replace(ALICE, grant_id="no-such-grant")
    with pytest.raises(ExchangeError) as caught:
        await service.credentials_for(
            backend="employees", principal=principal, agent=CURSOR
        )

    assert caught.value.reason == "reauthentication_required"
    assert caught.value.step == "upstream_refresh"


async def test_service_idp_closed_port_idp_unavailable(
    service: CredentialService,
) -> None:
    """An IdP that refuses connections is an outage with ``retry_after`` 30."""
    with pytest.raises(ServerUnavailableError) as caught:
        await service.credentials_for(
            backend="employees", principal=ALICE, agent=CURSOR
        )

    assert isinstance(caught.value, UpstreamError)
    assert caught.value.reason == "idp_unavailable"
    assert caught.value.step == "token_exchange"
    assert caught.value.retry_after == 30
    assert "id-token-of-alice" not in str(caught.value)
    assert len(service.cache) == 0


async def test_service_invalidate_static_backend_nothing_dropped(
    service: CredentialService,
) -> None:
    """Invalidation only concerns cached ``id-jag`` tokens."""
    dropped = service.invalidate(backend="partners", principal=ALICE, agent=CURSOR)
    assert dropped is False
