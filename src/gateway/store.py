"""Gateway state behind one interface: grants, sessions, codes and caches.

The in-memory store serves one process. A shared store (Redis) implements the
same protocol so that any replica can serve any session.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Generic, Protocol, TypeVar

import msgspec

T = TypeVar("T")


class Store(Protocol):
    """Namespaced key-value storage with expiry.

    Values are bytes; callers encode Structs with msgspec. ``ttl`` is in
    seconds; None keeps the value until it is deleted or evicted.
    """

    async def get(self, namespace: str, key: str) -> bytes | None:
        """Return the value, or None when absent or expired."""
        ...

    async def set(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> None:
        """Store a value, replacing any earlier one."""
        ...

    async def add(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> bool:
        """Store a value only if the key is absent; return whether it was stored."""
        ...

    async def pop(self, namespace: str, key: str) -> bytes | None:
        """Remove and return a value atomically (single-use codes)."""
        ...

    async def delete(self, namespace: str, key: str) -> None:
        """Remove a value if present."""
        ...

    async def count(self, namespace: str) -> int:
        """Return how many live values a namespace holds."""
        ...

    def scan(self, namespace: str) -> AsyncIterator[tuple[str, bytes]]:
        """Yield the live ``(key, value)`` pairs of a namespace, in no set order.

        For admin operations, not request paths, because it reads the whole
        namespace. A value written or deleted while the scan runs may or may
        not be yielded, as with Redis ``SCAN``. Every value live for the whole
        scan is yielded once.
        """
        ...


class MemoryStore:
    """A process-local :class:`Store` with a bound per namespace.

    When a namespace holds ``max_entries`` values, the least recently written
    one is evicted. Expired values are removed when read or when evicting.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._data: dict[str, OrderedDict[str, tuple[bytes, float | None]]] = {}

    def _space(self, namespace: str) -> OrderedDict[str, tuple[bytes, float | None]]:
        space = self._data.get(namespace)
        if space is None:
            space = self._data[namespace] = OrderedDict()
        return space

    async def get(self, namespace: str, key: str) -> bytes | None:
        """Return the value, or None when absent or expired."""
        space = self._space(namespace)
        item = space.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del space[key]
            return None
        return value

    async def set(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> None:
        """Store a value, replacing any earlier one."""
        space = self._space(namespace)
        expires = time.monotonic() + ttl if ttl is not None else None
        space[key] = (value, expires)
        space.move_to_end(key)
        while len(space) > self.max_entries:
            space.popitem(last=False)

    async def add(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> bool:
        """Store a value only if the key is absent; return whether it was stored."""
        if await self.get(namespace, key) is not None:
            return False
        await self.set(namespace, key, value, ttl)
        return True

    async def pop(self, namespace: str, key: str) -> bytes | None:
        """Remove and return a value atomically (single-use codes)."""
        value = await self.get(namespace, key)
        if value is not None:
            self._space(namespace).pop(key, None)
        return value

    async def delete(self, namespace: str, key: str) -> None:
        """Remove a value if present."""
        self._space(namespace).pop(key, None)

    async def count(self, namespace: str) -> int:
        """Return how many live values a namespace holds."""
        now = time.monotonic()
        space = self._space(namespace)
        return sum(1 for _, exp in space.values() if exp is None or exp > now)

    async def scan(self, namespace: str) -> AsyncIterator[tuple[str, bytes]]:
        """Yield the live ``(key, value)`` pairs of a namespace, in no set order."""
        # A snapshot, so that callers may write to the namespace between items.
        items = list(self._space(namespace).items())
        for key, (value, expires) in items:
            if expires is None or expires > time.monotonic():
                yield key, value


class TypedStore(Generic[T]):
    """A view of one namespace of a :class:`Store` holding one Struct type."""

    def __init__(self, store: Store, namespace: str, type_: type[T]) -> None:
        self.store = store
        self.namespace = namespace
        self._decoder = msgspec.json.Decoder(type_)
        self._encoder = msgspec.json.Encoder()

    async def get(self, key: str) -> T | None:
        """Return the value, or None when absent or expired."""
        raw = await self.store.get(self.namespace, key)
        return None if raw is None else self._decoder.decode(raw)

    async def set(self, key: str, value: T, ttl: float | None = None) -> None:
        """Store a value, replacing any earlier one."""
        await self.store.set(self.namespace, key, self._encoder.encode(value), ttl)

    async def add(self, key: str, value: T, ttl: float | None = None) -> bool:
        """Store a value only if absent; return whether it was stored."""
        return await self.store.add(
            self.namespace, key, self._encoder.encode(value), ttl
        )

    async def pop(self, key: str) -> T | None:
        """Remove and return a value."""
        raw = await self.store.pop(self.namespace, key)
        return None if raw is None else self._decoder.decode(raw)

    async def delete(self, key: str) -> None:
        """Remove a value if present."""
        await self.store.delete(self.namespace, key)

    async def scan(self) -> AsyncIterator[tuple[str, T]]:
        """Yield the live ``(key, value)`` pairs; see :meth:`Store.scan`."""
        async for key, raw in self.store.scan(self.namespace):
            yield key, self._decoder.decode(raw)
