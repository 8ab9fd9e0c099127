"""Grants: what the gateway keeps server-side for each signed-in user and client.

A grant holds the user's upstream ID token and refresh token. They never leave
the gateway: MCP clients get the gateway's own access tokens, which reference
the grant by id.
"""

from __future__ import annotations

import time
from typing import Protocol

import msgspec

from gateway.errors import ExchangeError
from gateway.store import Store, TypedStore


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
    revoked: bool = False


class UpstreamTokens(msgspec.Struct, kw_only=True):
    """Tokens returned by an upstream refresh."""

    id_token: str
    id_token_expires_at: int
    refresh_token: str | None = None


class UpstreamRefresher(Protocol):
    """Refreshes a user's upstream tokens with the upstream refresh token."""

    async def refresh(self, refresh_token: str) -> UpstreamTokens:
        """Return new tokens.

        Raises:
            ExchangeError: The IdP rejected the refresh token (``invalid_grant``).
            UpstreamError: The IdP could not be reached.
        """
        ...


class GrantStore:
    """Grants in the state store, with upstream ID token refresh.

    Args:
        store: The state store.
        refresher: Used when a grant's ID token has expired.
        min_remaining: An ID token with fewer seconds left than this is
            refreshed before use.
    """

    NAMESPACE = "grant"

    def __init__(
        self, store: Store, refresher: UpstreamRefresher, *, min_remaining: int = 60
    ) -> None:
        self._grants = TypedStore(store, self.NAMESPACE, Grant)
        self._refresher = refresher
        self.min_remaining = min_remaining

    async def get(self, grant_id: str) -> Grant | None:
        """Return a live grant, or None when unknown, expired or revoked."""
        grant = await self._grants.get(grant_id)
        if grant is None or grant.revoked or grant.expires_at <= time.time():
            return None
        return grant

    async def save(self, grant: Grant) -> None:
        """Store a grant until it expires."""
        ttl = max(1.0, grant.expires_at - time.time())
        await self._grants.set(grant.grant_id, grant, ttl)

    async def revoke(self, grant_id: str) -> None:
        """End a grant at once; tokens that reference it stop working."""
        await self._grants.delete(grant_id)

    async def current_id_token(self, grant_id: str) -> str:
        """Return the grant's upstream ID token, refreshing it if it is near expiry.

        Raises:
            ExchangeError: With ``reason="reauthentication_required"`` when the
                grant is gone or the upstream refresh was rejected; the grant is
                revoked first, so only a new sign-in helps.
            UpstreamError: The IdP is unreachable (the grant is kept).
        """
        grant = await self.get(grant_id)
        if grant is None:
            raise ExchangeError(
                "the sign-in has ended; sign in again",
                oauth_error="invalid_grant",
                step="upstream_refresh",
                reason="reauthentication_required",
            )
        if grant.id_token_expires_at - time.time() > self.min_remaining:
            return grant.upstream_id_token
        if not grant.upstream_refresh_token:
            await self.revoke(grant_id)
            raise ExchangeError(
                "the upstream ID token expired and there is no refresh token; "
                "sign in again",
                oauth_error="invalid_grant",
                step="upstream_refresh",
                reason="reauthentication_required",
            )
        try:
            tokens = await self._refresher.refresh(grant.upstream_refresh_token)
        except ExchangeError as exc:
            await self.revoke(grant_id)
            raise ExchangeError(
                f"the upstream refresh was rejected ({exc.oauth_error}); sign in again",
                oauth_error=exc.oauth_error,
                step="upstream_refresh",
                reason="reauthentication_required",
            ) from exc
        grant.upstream_id_token = tokens.id_token
        grant.id_token_expires_at = tokens.id_token_expires_at
        if tokens.refresh_token:
            grant.upstream_refresh_token = tokens.refresh_token
        await self.save(grant)
        return grant.upstream_id_token
