"""The per-user session cap of the session store."""

from __future__ import annotations

import pytest

from gateway.sessions import SessionStore
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio


async def open_sessions(store: SessionStore, sub: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        record = await store.create(
            user_iss="https://idp.example",
            user_sub=sub,
            agent_id="cursor",
            backend="partners",
            backend_session_id=None,
        )
        ids.append(record.gateway_session_id)
    return ids


async def test_session_cap_ends_users_oldest() -> None:
    """Past the cap, the same user's oldest sessions end, newest first kept."""
    sessions = SessionStore(MemoryStore(), max_per_user=3)
    ids = await open_sessions(sessions, "alice", 5)
    assert await sessions.get(ids[0]) is None
    assert await sessions.get(ids[1]) is None
    for session_id in ids[2:]:
        assert await sessions.get(session_id) is not None


async def test_session_cap_spares_other_users() -> None:
    """One user's flood of sessions never ends another user's session."""
    store = MemoryStore(max_entries=50)
    sessions = SessionStore(store, max_per_user=5)
    (bobs,) = await open_sessions(sessions, "bob", 1)
    await open_sessions(sessions, "alice", 200)
    assert await sessions.get(bobs) is not None


async def test_session_cap_counts_only_live_sessions() -> None:
    """Sessions ended by DELETE do not count against the cap."""
    sessions = SessionStore(MemoryStore(), max_per_user=2)
    first, second = await open_sessions(sessions, "alice", 2)
    await sessions.delete(first)
    (third,) = await open_sessions(sessions, "alice", 1)
    assert await sessions.get(second) is not None
    assert await sessions.get(third) is not None
