"""Expiry of dynamically registered clients in the in-memory store."""

from __future__ import annotations

import types

import pytest

from gateway import store as store_module
from gateway.oauth.clients import ClientRecord, ClientRegistry
from gateway.store import MemoryStore

REGISTRATION = {
    "client_name": "cursor",
    "redirect_uris": ["http://127.0.0.1:3000/callback"],
    "token_endpoint_auth_method": "none",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """The store's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A clock for the store module only, so no test sleeps."""
    clock = Clock()
    monkeypatch.setattr(
        store_module, "time", types.SimpleNamespace(monotonic=clock.monotonic)
    )
    return clock


@pytest.mark.anyio
async def test_registered_client_unused_expires(clock: Clock) -> None:
    """A registered client not looked up within its ttl expires."""
    store = MemoryStore()
    registry = ClientRegistry(store)
    record, _ = await ClientRegistry(store).register(REGISTRATION, ttl=100)
    assert record.ttl == 100
    clock.now += 99
    assert await store.get("client", record.client_id) is not None
    clock.now += 1
    assert await registry.get(record.client_id) is None


@pytest.mark.anyio
async def test_registered_client_lookup_restarts_ttl(clock: Clock) -> None:
    """Each lookup (authorize, token) gives the client a whole ttl again."""
    registry = ClientRegistry(MemoryStore())
    record, _ = await registry.register(REGISTRATION, ttl=100)
    for _ in range(5):
        clock.now += 90
        assert await registry.get(record.client_id) is not None
    clock.now += 100
    assert await registry.get(record.client_id) is None


@pytest.mark.anyio
async def test_registered_client_default_ttl_thirty_days(clock: Clock) -> None:
    """Without a ttl argument a registration lives 30 days unused."""
    registry = ClientRegistry(MemoryStore())
    record, _ = await registry.register(REGISTRATION)
    assert record.ttl == 30 * 24 * 3600
    clock.now += 30 * 24 * 3600 - 1
    assert await registry.get(record.client_id) is not None


@pytest.mark.anyio
async def test_pre_registered_client_never_expires(clock: Clock) -> None:
    """A client saved without ttl (pre-registration) stays after any time."""
    registry = ClientRegistry(MemoryStore())
    await registry.save(
        ClientRecord(
            client_id="pre",
            redirect_uris=["http://127.0.0.1:3000/callback"],
            created_at=0,
            pre_approved=True,
        )
    )
    clock.now += 10 * 365 * 24 * 3600
    assert await registry.get("pre") is not None


@pytest.mark.anyio
async def test_client_in_use_survives_registration_flood(clock: Clock) -> None:
    """A client looked up after others registered is not the one evicted."""
    registry = ClientRegistry(MemoryStore(max_entries=3))
    used, _ = await registry.register(REGISTRATION)
    await registry.register(REGISTRATION)
    await registry.get(used.client_id)
    await registry.register(REGISTRATION)
    await registry.register(REGISTRATION)
    assert await registry.get(used.client_id) is not None
