"""MemoryStore.scan and TypedStore.scan: the live values of one namespace."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from gateway.store import MemoryStore, TypedStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Item(msgspec.Struct):
    name: str


async def test_store_scan_yields_live_values_of_namespace() -> None:
    """Expired values and other namespaces are left out."""
    store = MemoryStore()
    await store.set("a", "k1", b"1")
    await store.set("a", "k2", b"2", ttl=60)
    await store.set("a", "gone", b"x", ttl=0.001)
    await store.set("b", "k3", b"3")
    await anyio.sleep(0.01)
    found = {key: value async for key, value in store.scan("a")}
    assert found == {"k1": b"1", "k2": b"2"}


async def test_store_scan_allows_writes_during_iteration() -> None:
    """Deleting and adding keys while scanning neither fails nor repeats keys."""
    store = MemoryStore()
    for index in range(5):
        await store.set("a", f"k{index}", b"v")
    seen = []
    async for key, _ in store.scan("a"):
        seen.append(key)
        await store.delete("a", key)
        await store.set("a", f"new-{key}", b"v")
    assert sorted(seen) == [f"k{index}" for index in range(5)]


async def test_typed_store_scan_decodes_values() -> None:
    """TypedStore.scan yields decoded Structs."""
    typed = TypedStore(MemoryStore(), "items", Item)
    await typed.set("x", Item("first"))
    assert [item async for item in typed.scan()] == [("x", Item("first"))]
