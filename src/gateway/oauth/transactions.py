"""Server-side state of the sign-in flow: pending consents, codes, refresh tokens.

Every secret handed to a browser or client (transaction ids, authorization
codes, refresh tokens) is random and at least 256 bits. Codes and refresh
tokens are stored under their SHA-256 only.
"""

from __future__ import annotations

import secrets
import time

import msgspec

from gateway.oauth.clients import hash_secret
from gateway.store import Store, TypedStore

CONSENT_TTL = 600
"""Seconds a consent page stays valid."""

UPSTREAM_TTL = 600
"""Seconds the user has to sign in at the IdP."""

CODE_TTL = 60
"""Seconds an authorization code stays redeemable."""

USED_CODE_TTL = 600
"""Seconds a redeemed code is remembered, so that a replay revokes the grant."""


class AuthorizationRequest(msgspec.Struct, kw_only=True):
    """A validated ``/oauth2/authorize`` request, carried through the flow.

    Attributes:
        client_id: The requesting client.
        client_name: Its registered name.
        redirect_uri: Where the code goes.
        redirect_uri_given: Whether the request named the redirect URI (the
            token request must then repeat it).
        state: The client's ``state``, echoed back.
        code_challenge: The client's PKCE S256 challenge.
        resource: The canonical resource of the backend the token is for.
        backend: That backend's name.
        scopes: Scopes to grant.
        login_hint: Passed on to the IdP.
        agent_id: The agent the client was identified as.
        agent_verified: Whether that identity is verified.
        agent_trust: ``verified``, ``self-asserted`` or ``unknown``.
        consent_approved: Whether the user approved the client on the consent
            page in this flow, so the callback remembers the approval.
        remembered_user_iss: With ``remembered_user_sub``, the user whose
            remembered approval skipped the consent page; the callback
            rejects a sign-in by anyone else.
        remembered_user_sub: That user's subject.
        upstream_client_id: The upstream client chosen for the sign-in: a
            verified agent's own client, or None for the gateway's.
        redirect_trusted: Whether an error found before the user acted may
            be redirected to ``redirect_uri`` at once: true for a
            pre-registered client and a client whose identity is proven. For
            any other client such an error is shown on a page with a link,
            so the gateway is no open redirector (RFC 9700 section 4.11.2).
    """

    client_id: str
    client_name: str | None = None
    redirect_uri: str
    redirect_uri_given: bool = True
    state: str
    code_challenge: str
    resource: str
    backend: str
    scopes: list[str]
    login_hint: str | None = None
    agent_id: str
    agent_verified: bool = False
    agent_trust: str = "unknown"
    consent_approved: bool = False
    remembered_user_iss: str | None = None
    remembered_user_sub: str | None = None
    upstream_client_id: str | None = None
    redirect_trusted: bool = False


class PendingConsent(msgspec.Struct, kw_only=True):
    """An authorization request waiting for the user's decision.

    Attributes:
        request: The request.
        browser_hash: SHA-256 of the cookie that binds the consent page to
            the browser it was shown in.
    """

    request: AuthorizationRequest
    browser_hash: str


class UpstreamTransaction(msgspec.Struct, kw_only=True):
    """A sign-in in progress at the IdP, keyed by the gateway's upstream ``state``.

    Attributes:
        request: The authorization request being completed.
        nonce: The ``nonce`` sent to the IdP.
        code_verifier: The PKCE verifier of the upstream code.
        browser_hash: SHA-256 of the cookie set in the browser that was sent
            to the IdP. The callback requires that cookie, so the sign-in
            finishes only in the browser that started it. Empty in a record
            stored before this field existed, which no cookie matches.
    """

    request: AuthorizationRequest
    nonce: str
    code_verifier: str
    browser_hash: str = ""


class AuthorizationCode(msgspec.Struct, kw_only=True):
    """The authorization request and grant behind a gateway authorization code."""

    request: AuthorizationRequest
    grant_id: str
    expires_at: float


class RefreshRecord(msgspec.Struct, kw_only=True):
    """The grant behind a refresh token, kept after rotation to detect reuse."""

    grant_id: str
    client_id: str
    scopes: list[str]
    expires_at: float


class FlowState:
    """The flow's records in the state store, one namespace per kind."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._consents = TypedStore(store, "oauth_consent", PendingConsent)
        self._upstream = TypedStore(store, "oauth_upstream", UpstreamTransaction)
        self._codes = TypedStore(store, "oauth_code", AuthorizationCode)
        self._refresh = TypedStore(store, "oauth_refresh", RefreshRecord)

    async def start_consent(self, request: AuthorizationRequest) -> tuple[str, str]:
        """Store a request awaiting consent.

        Returns:
            The transaction id for the form and the secret for the browser
            cookie.
        """
        transaction = secrets.token_urlsafe(32)
        browser_secret = secrets.token_urlsafe(32)
        pending = PendingConsent(
            request=request, browser_hash=hash_secret(browser_secret)
        )
        await self._consents.set(transaction, pending, CONSENT_TTL)
        return transaction, browser_secret

    async def peek_consent(self, transaction: str) -> PendingConsent | None:
        """Return a pending consent without using it up."""
        if not transaction or len(transaction) > 100:
            return None
        return await self._consents.get(transaction)

    async def finish_consent(self, transaction: str) -> PendingConsent | None:
        """Remove and return a pending consent; None if already used or expired."""
        return await self._consents.pop(transaction)

    async def start_upstream(self, transaction: UpstreamTransaction) -> tuple[str, str]:
        """Store a sign-in at the IdP, bound to a new browser secret.

        Returns:
            The ``state`` to send to the IdP and the secret for the browser
            cookie; the stored transaction keeps only the secret's hash.
        """
        state = secrets.token_urlsafe(32)
        browser_secret = secrets.token_urlsafe(32)
        transaction.browser_hash = hash_secret(browser_secret)
        await self._upstream.set(state, transaction, UPSTREAM_TTL)
        return state, browser_secret

    async def finish_upstream(self, state: str) -> UpstreamTransaction | None:
        """Remove and return the sign-in for an IdP ``state``; single use."""
        if not state or len(state) > 100:
            return None
        return await self._upstream.pop(state)

    async def issue_code(self, request: AuthorizationRequest, grant_id: str) -> str:
        """Return a new single-use authorization code valid for :data:`CODE_TTL` s."""
        code = secrets.token_urlsafe(32)
        record = AuthorizationCode(
            request=request, grant_id=grant_id, expires_at=time.time() + CODE_TTL
        )
        await self._codes.set(hash_secret(code), record, CODE_TTL)
        return code

    async def find_code(self, code: str) -> tuple[AuthorizationCode | None, str | None]:
        """Look up an authorization code without using it up.

        Returns:
            The code's record, or None when it is unknown, expired or used.
            Second, when the code was already redeemed within
            :data:`USED_CODE_TTL` seconds, the id of the grant it was issued
            for, so that the caller can revoke that grant after a replay.
        """
        if not code or len(code) > 200:
            return None, None
        key = hash_secret(code)
        record = await self._codes.get(key)
        if record is not None and record.expires_at > time.time():
            return record, None
        used = await self._store.get("oauth_code_used", key)
        return None, used.decode() if used is not None else None

    async def redeem_code(self, code: str) -> AuthorizationCode | None:
        """Use up an authorization code that :meth:`find_code` returned.

        Returns:
            The code's record, or None when another request redeemed it first
            or it expired in the meantime.
        """
        key = hash_secret(code)
        record = await self._codes.pop(key)
        if record is None or record.expires_at <= time.time():
            return None
        await self._store.set(
            "oauth_code_used", key, record.grant_id.encode(), USED_CODE_TTL
        )
        return record

    async def issue_refresh_token(self, record: RefreshRecord) -> str:
        """Return a new refresh token for ``record``, stored until it expires."""
        token = secrets.token_urlsafe(32)
        ttl = max(1.0, record.expires_at - time.time())
        await self._refresh.set(hash_secret(token), record, ttl)
        return token

    async def find_refresh_token(self, token: str) -> RefreshRecord | None:
        """Return a refresh token's record, or None when unknown or expired.

        A rotated-out token still has its record until it would have expired,
        so that :meth:`mark_refresh_token_used` can detect its reuse.
        """
        if not token or len(token) > 200:
            return None
        record = await self._refresh.get(hash_secret(token))
        if record is None or record.expires_at <= time.time():
            return None
        return record

    async def is_refresh_token_used(self, token: str) -> bool:
        """Return whether a refresh token was already rotated out."""
        return (
            await self._store.get("oauth_refresh_used", hash_secret(token)) is not None
        )

    async def mark_refresh_token_used(self, token: str, record: RefreshRecord) -> bool:
        """Mark a refresh token used; return False when it had been used before.

        The check and the mark are one atomic store operation, so of two
        concurrent requests with the same token only one gets True.
        """
        ttl = max(1.0, record.expires_at - time.time())
        return await self._store.add(
            "oauth_refresh_used", hash_secret(token), b"1", ttl
        )
