"""Gateway MCP sessions: the client's session id mapped to the backend's.

The gateway terminates the client's MCP session. It mints its own session id,
binds it to the signed-in user (issuer and subject), the agent and the
backend, and keeps the backend's own session id next to it. Binding never
uses token bytes, so a refreshed access token keeps its session.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec
import structlog

from gateway.store import Store, TypedStore

log = structlog.get_logger("gateway.sessions")


class _UserSessions(msgspec.Struct):
    ids: list[str]


NAMESPACE = "session"
USER_INDEX_NAMESPACE = "user_sessions"
MAX_SESSIONS_PER_USER = 100
"""Live sessions one user may hold; creating one more ends that user's oldest."""
MAX_SESSION_ID_LENGTH = 256
"""Longer ``Mcp-Session-Id`` values are treated as unknown without a lookup."""


class SessionRecord(msgspec.Struct, kw_only=True):
    """One gateway session and the backend session behind it.

    Attributes:
        gateway_session_id: The id the client sends in ``Mcp-Session-Id``.
        user_iss: The issuer of the user the session is bound to.
        user_sub: The subject of that user.
        agent_id: The agent the session is bound to.
        backend: The backend name the session is bound to.
        backend_session_id: The backend's session id, or None when the
            backend issued none (a stateless backend).
        protocol_version: The protocol version the client requested.
        initialize_params: The client's ``initialize`` params, replayed when
            the backend session has to be initialized again.
        backend_era: ``handshake`` when the backend holds a session of its
            own, ``stateless`` when it speaks 2026-07-28 and the gateway
            alone holds the session.
        created_at: When the session was created (epoch seconds).
        touched_at: When its expiry was last extended (epoch seconds).
    """

    gateway_session_id: str
    user_iss: str
    user_sub: str
    agent_id: str
    backend: str
    backend_session_id: str | None
    protocol_version: str | None = None
    initialize_params: dict[str, Any] = msgspec.field(default_factory=dict)
    backend_era: str = "handshake"
    created_at: float
    touched_at: float

    def is_bound_to(
        self, *, user_iss: str, user_sub: str, agent_id: str, backend: str
    ) -> bool:
        """Return whether the session belongs to this user, agent and backend."""
        return (
            self.user_iss == user_iss
            and self.user_sub == user_sub
            and self.agent_id == agent_id
            and self.backend == backend
        )


def new_session_id() -> str:
    """Return a new session id: 43 URL-safe characters from 32 random bytes.

    Every character is visible ASCII (0x21 to 0x7E), as MCP requires.
    """
    return secrets.token_urlsafe(32)


def is_valid_session_id(value: str) -> bool:
    """Return whether a client-sent session id is visible ASCII of sane length."""
    return (
        0 < len(value) <= MAX_SESSION_ID_LENGTH
        and value.isascii()
        and all(0x21 <= ord(char) <= 0x7E for char in value)
    )


class SessionStore:
    """Session records in the ``session`` namespace of a :class:`Store`.

    Expiry slides: each use through :meth:`touch` extends a session to ``ttl``
    seconds from now. To save a store write per request, the expiry is only
    rewritten once a tenth of ``ttl`` has passed since the last extension, so
    an idle session ends between ``0.9 * ttl`` and ``ttl`` after its last use.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 3600,
        max_per_user: int = MAX_SESSIONS_PER_USER,
    ) -> None:
        self.ttl = ttl
        self.max_per_user = max_per_user
        self._records = TypedStore(store, NAMESPACE, SessionRecord)
        self._by_user = TypedStore(store, USER_INDEX_NAMESPACE, _UserSessions)

    async def create(
        self,
        *,
        user_iss: str,
        user_sub: str,
        agent_id: str,
        backend: str,
        backend_session_id: str | None,
        protocol_version: str | None = None,
        initialize_params: dict[str, Any] | None = None,
        backend_era: str = "handshake",
    ) -> SessionRecord:
        """Mint a session id, store the record and return it."""
        now = time.time()
        while True:
            record = SessionRecord(
                gateway_session_id=new_session_id(),
                user_iss=user_iss,
                user_sub=user_sub,
                agent_id=agent_id,
                backend=backend,
                backend_session_id=backend_session_id,
                protocol_version=protocol_version,
                initialize_params=initialize_params or {},
                backend_era=backend_era,
                created_at=now,
                touched_at=now,
            )
            # A collision of 256-bit random ids does not happen in practice;
            # add() makes it harmless anyway.
            if await self._records.add(record.gateway_session_id, record, self.ttl):
                await self._index(record)
                return record

    async def _index(self, record: SessionRecord) -> None:
        # The store is bounded and evicts the least recently written entry,
        # so without a cap one user opening sessions in a loop would push
        # other users' sessions out. The cap ends the same user's oldest
        # sessions instead; their next request gets 404 and re-initializes.
        # NOTE: the read-modify-write of the index is not atomic across
        # replicas; a shared store needs a list or set type for it.
        key = f"{record.user_iss}\n{record.user_sub}"
        index = await self._by_user.get(key)
        ids = [] if index is None else index.ids
        live = [sid for sid in ids if await self._records.get(sid) is not None]
        live.append(record.gateway_session_id)
        while len(live) > self.max_per_user:
            oldest = live.pop(0)
            await self._records.delete(oldest)
            log.warning(
                "session.evicted",
                reason="max_sessions_per_user",
                max_per_user=self.max_per_user,
            )
        await self._by_user.set(key, _UserSessions(ids=live), self.ttl)

    async def get(self, session_id: str) -> SessionRecord | None:
        """Return the session, or None when unknown, ended, expired or malformed."""
        if not is_valid_session_id(session_id):
            return None
        return await self._records.get(session_id)

    async def get_bound(
        self,
        session_id: str,
        *,
        user_iss: str,
        user_sub: str,
        agent_id: str,
        backend: str,
    ) -> SessionRecord | None:
        """Return the session only if it is bound to this user, agent and backend.

        A session of someone else returns None exactly like an unknown one, so
        callers cannot reveal that it exists.
        """
        record = await self.get(session_id)
        if record is None or not record.is_bound_to(
            user_iss=user_iss, user_sub=user_sub, agent_id=agent_id, backend=backend
        ):
            return None
        return record

    async def touch(self, record: SessionRecord) -> None:
        """Extend the session's expiry to ``ttl`` seconds from now (see class doc)."""
        now = time.time()
        if now - record.touched_at < self.ttl / 10:
            return
        record.touched_at = now
        await self._records.set(record.gateway_session_id, record, self.ttl)

    async def update(self, record: SessionRecord) -> None:
        """Store a changed record (a new backend session id) and extend its expiry."""
        record.touched_at = time.time()
        await self._records.set(record.gateway_session_id, record, self.ttl)

    async def delete(self, session_id: str) -> None:
        """End a session; later lookups return None."""
        if is_valid_session_id(session_id):
            await self._records.delete(session_id)
