"""Grants: what the gateway keeps server-side for each signed-in user and client.

A grant holds the user's upstream ID token and refresh token. They never leave
the gateway: MCP clients get the gateway's own access tokens, which reference
the grant by id.

A grant lives no longer than the user's session at the upstream IdP. When it
has an upstream refresh token, :meth:`GrantStore.recheck_upstream` confirms
the session with it at most every ``recheck_after`` seconds. When it has none,
the session cannot be confirmed, so the grant ends when its ID token expires.

Every upstream refresh must return an ID token for the same user: the same
``iss`` and ``sub`` as the grant (OpenID Connect Core 1.0 section 12.2).
Otherwise the grant is revoked, as when the IdP rejects the refresh.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
import msgspec
import structlog

from gateway.errors import ExchangeError
from gateway.events import GrantSelector
from gateway.store import Store, TypedStore

log = structlog.get_logger("gateway.oauth")

__all__ = [
    "ID_TOKEN_EXPIRED",
    "ID_TOKEN_REJECTED",
    "UPSTREAM_CLIENT_REMOVED",
    "UPSTREAM_SESSION_ENDED",
    "UPSTREAM_SUBJECT_CHANGED",
    "Grant",
    "GrantEndedError",
    "GrantSelector",
    "GrantStore",
    "UpstreamRefresher",
    "UpstreamTokens",
]

# Reasons of the revocations the gateway decides by itself, as ``GrantRevoked``
# carries them.
UPSTREAM_SESSION_ENDED = "upstream_session_ended"
"""The IdP rejected the upstream refresh token."""
UPSTREAM_SUBJECT_CHANGED = "upstream_subject_changed"
"""An upstream refresh returned an ID token with another ``sub`` or ``iss``."""
ID_TOKEN_EXPIRED = "id_token_expired"
"""The upstream ID token expired and there is no upstream refresh token."""
UPSTREAM_CLIENT_REMOVED = "upstream_client_removed"
"""The upstream client the user signed in through is no longer configured."""
ID_TOKEN_REJECTED = "id_token_rejected"
"""The IdP rejected the user's ID token at the ID-JAG token exchange."""


class Grant(msgspec.Struct, kw_only=True):
    """One user's authorization of one client, with the upstream tokens.

    Attributes:
        grant_id: Random id; access and refresh tokens reference it.
        user_iss: The upstream IdP issuer.
        user_sub: The user's subject at the IdP.
        email: The user's email from the ID token, if any.
        client_id: The gateway client the grant was given to.
        agent_id: The agent recorded at issuance.
        agent_verified: Whether that agent identity was verified.
        resource: The backend resource the client asked for.
        scopes: Scopes granted.
        upstream_id_token: The user's current upstream ID token.
        id_token_expires_at: Its ``exp``.
        upstream_refresh_token: The upstream refresh token, if one was issued.
        created_at: When the user signed in (epoch seconds).
        expires_at: When the grant ends regardless of refreshes.
        upstream_checked_at: When the IdP last confirmed the user's session
            with an upstream refresh (epoch seconds); None means only the
            sign-in at ``created_at`` did.
        upstream_client_id: The upstream client the user signed in through,
            which alone may refresh and exchange the upstream tokens: a
            verified agent's own client, or None for the gateway's.
        revoked: Set when the grant was revoked.
    """

    grant_id: str
    user_iss: str
    user_sub: str
    email: str | None = None
    client_id: str
    agent_id: str
    agent_verified: bool = False
    resource: str
    scopes: list[str] = msgspec.field(default_factory=list)
    upstream_id_token: str
    id_token_expires_at: int
    upstream_refresh_token: str | None = None
    created_at: int
    expires_at: int
    upstream_checked_at: int | None = None
    upstream_client_id: str | None = None
    revoked: bool = False


class UpstreamTokens(msgspec.Struct, kw_only=True):
    """Tokens returned by an upstream refresh.

    Attributes:
        id_token: The new ID token, verified.
        id_token_expires_at: Its ``exp``.
        issuer: Its ``iss``.
        subject: Its ``sub``.
        refresh_token: The rotated upstream refresh token, if the IdP sent one.
    """

    id_token: str
    id_token_expires_at: int
    issuer: str
    subject: str
    refresh_token: str | None = None


class GrantEndedError(ExchangeError):
    """Only a new sign-in helps, and the grant store revoked the grant.

    ``reason`` is ``reauthentication_required`` and ``step`` is
    ``upstream_refresh``.

    Attributes:
        revocation_reason: Why the grant ended, such as
            :data:`UPSTREAM_SESSION_ENDED`; the ``reason`` of ``GrantRevoked``.
    """

    def __init__(
        self,
        message: str,
        *,
        oauth_error: str,
        revocation_reason: str,
        revoked: Grant | None,
    ) -> None:
        super().__init__(
            message,
            oauth_error=oauth_error,
            step="upstream_refresh",
            reason="reauthentication_required",
        )
        self.revocation_reason = revocation_reason
        self._revoked = revoked

    def claim_revoked(self) -> Grant | None:
        """Return the revoked grant to the first caller only, else None.

        Requests waiting for one exchange share its error, and only one of
        them announces the revocation.
        """
        revoked, self._revoked = self._revoked, None
        return revoked


class UpstreamRefresher(Protocol):
    """Refreshes a user's upstream tokens with the upstream refresh token."""

    async def refresh(
        self, refresh_token: str, *, client_id: str | None = None
    ) -> UpstreamTokens:
        """Return new tokens from the client the refresh token was issued to.

        Args:
            refresh_token: The upstream refresh token.
            client_id: That upstream client; None for the gateway's own.

        Raises:
            ExchangeError: The IdP rejected the refresh token (``invalid_grant``).
            UpstreamError: The IdP could not be reached.
        """
        ...


def selector_matches(selector: GrantSelector, grant: Grant) -> bool:
    """Return whether a grant matches every field the selector sets."""
    pairs = (
        (selector.user_iss, grant.user_iss),
        (selector.user_sub, grant.user_sub),
        (selector.agent_id, grant.agent_id),
        (selector.client_id, grant.client_id),
    )
    return all(value is None or value == actual for value, actual in pairs)


class _GrantLocks:
    """One lock per grant id, dropped when no task holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, grant_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(grant_id)
        if entry is None:
            entry = self._locks[grant_id] = (anyio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[grant_id]


class GrantStore:
    """Grants in the state store, with upstream refresh and session re-checks.

    Upstream refreshes of one grant run one at a time in this process, so two
    requests never present the same rotating upstream refresh token (the IdP
    would take the second for a replay and end the session).

    Args:
        store: The state store.
        refresher: Used when a grant's ID token has expired or its upstream
            session is re-checked.
        min_remaining: An ID token with fewer seconds left than this is
            refreshed before use.
        recheck_after: Seconds after which :meth:`recheck_upstream` calls the
            IdP again; 0 calls it every time.
        clock: Returns the current time in epoch seconds.
    """

    NAMESPACE = "grant"
    REVOKED_NAMESPACE = "grant_revoked"
    """Ids of revoked grants, kept until the grant would have expired."""

    def __init__(
        self,
        store: Store,
        refresher: UpstreamRefresher,
        *,
        min_remaining: int = 60,
        recheck_after: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._grants = TypedStore(store, self.NAMESPACE, Grant)
        self._refresher = refresher
        self._clock = clock
        self._locks = _GrantLocks()
        self.min_remaining = min_remaining
        self.recheck_after = recheck_after

    async def get(self, grant_id: str) -> Grant | None:
        """Return a live grant, or None when unknown, expired or revoked."""
        grant = await self._grants.get(grant_id)
        if grant is None or grant.revoked or grant.expires_at <= self._clock():
            return None
        return grant

    async def save(self, grant: Grant) -> bool:
        """Store a grant until it expires; return False if it was revoked.

        A grant without an upstream refresh token has its ``expires_at`` capped
        in place at its ID token's ``exp``, because nothing can confirm the
        upstream session after that. A revoked grant is not written again,
        so a refresh that finishes after :meth:`revoke` cannot revive it.
        """
        if not grant.upstream_refresh_token:
            grant.expires_at = min(grant.expires_at, grant.id_token_expires_at)
        if await self._is_revoked(grant.grant_id):
            return False
        ttl = max(1.0, grant.expires_at - self._clock())
        await self._grants.set(grant.grant_id, grant, ttl)
        # revoke() writes its marker before it deletes the grant. If it ran
        # between the check above and the write, its marker is visible now,
        # so the write is undone. If it runs later, its delete removes the
        # write. So no transaction of the store is needed.
        if await self._is_revoked(grant.grant_id):
            await self._grants.delete(grant.grant_id)
            return False
        return True

    async def _is_revoked(self, grant_id: str) -> bool:
        return await self._store.get(self.REVOKED_NAMESPACE, grant_id) is not None

    async def revoke(self, grant_id: str) -> Grant | None:
        """End a grant at once; tokens that reference it stop working.

        Returns:
            The grant, when this call ended it; None when it had already
            ended (revoked, expired or unknown).
        """
        grant = await self._grants.get(grant_id)
        live = (
            grant is not None and not grant.revoked and grant.expires_at > self._clock()
        )
        if grant is not None:
            ttl = max(1.0, grant.expires_at - self._clock())
            if not await self._store.add(self.REVOKED_NAMESPACE, grant_id, b"1", ttl):
                # Another call revoked it first and reports it.
                live = False
        await self._grants.delete(grant_id)
        return grant if live else None

    async def find(self, selector: GrantSelector) -> list[Grant]:
        """Return the live grants that match every field the selector sets.

        This reads every grant in the store, so it is for admin commands and
        not for request paths.
        """
        now = self._clock()
        return [
            grant
            async for _, grant in self._grants.scan()
            if not grant.revoked
            and grant.expires_at > now
            and selector_matches(selector, grant)
        ]

    async def revoke_matching(self, selector: GrantSelector) -> list[Grant]:
        """Revoke every live grant that matches the selector and return them.

        A grant that another call revoked meanwhile is left out.
        """
        revoked: list[Grant] = []
        for grant in await self.find(selector):
            ended = await self.revoke(grant.grant_id)
            if ended is not None:
                revoked.append(ended)
        return revoked

    def recheck_due(self, grant: Grant) -> bool:
        """Return whether :meth:`recheck_upstream` would call the IdP for a grant."""
        if not grant.upstream_refresh_token:
            return False
        checked_at = grant.upstream_checked_at or grant.created_at
        return self._clock() - checked_at >= self.recheck_after

    async def recheck_upstream(self, grant: Grant) -> Grant | None:
        """Confirm the user's upstream session when the last check is too old.

        When :meth:`recheck_due` is true, the grant's upstream refresh token
        is redeemed at the IdP, and the rotated tokens and the check time are
        stored in the grant.

        Returns:
            The current grant, or None when it ended meanwhile.

        Raises:
            GrantEndedError: The IdP rejected the upstream refresh token, so
                the upstream session has ended, or the refreshed ID token
                names another user. The grant is revoked first;
                ``oauth_error`` is the IdP's code (``invalid_grant`` for
                another user).
            UpstreamError: The IdP is unavailable or returned an unusable
                response. The grant is kept.
        """
        if not self.recheck_due(grant):
            return grant
        async with self._locks.hold(grant.grant_id):
            # Another request may have checked while this one waited.
            current = await self.get(grant.grant_id)
            if current is None or not self.recheck_due(current):
                return current
            return await self._refresh_upstream(current)

    async def current_id_token(self, grant_id: str) -> str:
        """Return the grant's upstream ID token, refreshing it if it is near expiry.

        Raises:
            ExchangeError: With ``reason="reauthentication_required"`` when the
                grant is gone. A :class:`GrantEndedError` when this call
                revoked it: the upstream refresh was rejected or returned
                another user, or there is no refresh token. Either way only
                a new sign-in helps.
            UpstreamError: The IdP is unreachable (the grant is kept).
        """
        grant = await self.get(grant_id)
        if grant is not None and not self._id_token_expiring(grant):
            return grant.upstream_id_token
        async with self._locks.hold(grant_id):
            # Another request may have refreshed while this one waited.
            grant = await self.get(grant_id)
            if grant is None:
                raise _sign_in_ended("the sign-in has ended; sign in again")
            if not self._id_token_expiring(grant):
                return grant.upstream_id_token
            if not grant.upstream_refresh_token:
                raise GrantEndedError(
                    "the upstream ID token expired and there is no refresh token; "
                    "sign in again",
                    oauth_error="invalid_grant",
                    revocation_reason=ID_TOKEN_EXPIRED,
                    revoked=await self.revoke(grant_id),
                )
            refreshed = await self._refresh_upstream(grant)
            if refreshed is None:
                raise _sign_in_ended("the sign-in has ended; sign in again")
            return refreshed.upstream_id_token

    def _id_token_expiring(self, grant: Grant) -> bool:
        return grant.id_token_expires_at - self._clock() <= self.min_remaining

    async def _refresh_upstream(self, grant: Grant) -> Grant | None:
        """Redeem the grant's upstream refresh token and store the new tokens.

        The caller holds the grant's lock. Returns None when the grant was
        revoked during the IdP call.

        Raises:
            GrantEndedError: The IdP rejected the refresh, or its ID token
                names another user; the grant is revoked.
        """
        assert grant.upstream_refresh_token is not None
        try:
            tokens = await self._refresher.refresh(
                grant.upstream_refresh_token, client_id=grant.upstream_client_id
            )
        except ExchangeError as exc:
            raise GrantEndedError(
                f"the upstream refresh was rejected ({exc.oauth_error}); sign in again",
                oauth_error=exc.oauth_error,
                revocation_reason=UPSTREAM_SESSION_ENDED,
                revoked=await self.revoke(grant.grant_id),
            ) from exc
        if tokens.subject != grant.user_sub or tokens.issuer != grant.user_iss:
            log.warning(
                "oauth.upstream_subject_changed",
                grant_id=grant.grant_id,
                client_id=grant.client_id,
                user_iss=grant.user_iss,
                user_sub=grant.user_sub,
                refreshed_iss=tokens.issuer,
                refreshed_sub=tokens.subject,
            )
            raise GrantEndedError(
                "the upstream refresh returned an ID token for another user; "
                "sign in again",
                oauth_error="invalid_grant",
                revocation_reason=UPSTREAM_SUBJECT_CHANGED,
                revoked=await self.revoke(grant.grant_id),
            )
        grant.upstream_id_token = tokens.id_token
        grant.id_token_expires_at = tokens.id_token_expires_at
        if tokens.refresh_token:
            grant.upstream_refresh_token = tokens.refresh_token
        grant.upstream_checked_at = int(self._clock())
        if not await self.save(grant):
            return None
        return grant


def _sign_in_ended(message: str) -> ExchangeError:
    return ExchangeError(
        message,
        oauth_error="invalid_grant",
        step="upstream_refresh",
        reason="reauthentication_required",
    )
