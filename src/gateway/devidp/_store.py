"""A bounded in-memory map whose entries expire, for codes, grants and ``jti``s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ExpiringStore", "StoreFullError"]

V = TypeVar("V")


class StoreFullError(Exception):
    """The store contains ``max_entries`` live entries and cannot take another."""


class ExpiringStore(Generic[V]):
    """A dict whose entries disappear at their expiry time.

    Expired entries are dropped on every insert, so memory stays bounded by
    ``max_entries`` live entries. All methods are synchronous: on one event loop
    a lookup followed by an update cannot interleave with another request.
    """

    def __init__(self, *, max_entries: int, clock: Callable[[], float]) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, value: V, *, expires_at: float) -> None:
        """Store ``value`` under ``key`` until ``expires_at``.

        Raises:
            StoreFullError: The store is full of entries that have not expired.
        """
        if key not in self._entries and len(self._entries) >= self._max_entries:
            self.purge()
            if len(self._entries) >= self._max_entries:
                msg = f"the store already holds {self._max_entries} live entries"
                raise StoreFullError(msg)
        self._entries[key] = (expires_at, value)

    def get(self, key: str) -> V | None:
        """Return the value under ``key``, or None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        return value

    def pop(self, key: str) -> V | None:
        """Remove and return the value under ``key``, or None if absent or expired."""
        value = self.get(key)
        self._entries.pop(key, None)
        return value

    def values(self) -> list[V]:
        """Return the values of every entry that has not expired."""
        now = self._clock()
        return [
            value for expires_at, value in self._entries.values() if expires_at > now
        ]

    def purge(self) -> None:
        """Drop every expired entry."""
        now = self._clock()
        expired = [
            key for key, (expires_at, _) in self._entries.items() if expires_at <= now
        ]
        for key in expired:
            del self._entries[key]
