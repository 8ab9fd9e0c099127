"""Remembered consent: which clients a user approved, and in which browser.

The gateway learns who the user is only after the IdP sign-in, which comes
after the consent page. So an approval is remembered at the callback, in two
records:

- the consent itself, per user, client and backend, for
  :data:`CONSENT_MEMORY_TTL` seconds unless revoked;
- a browser record, named by a random cookie value, that records which user
  last signed in with that browser.

At ``authorize``, a browser whose user approved the client for the backend
skips the page. The callback then checks that the IdP signed in that same
user, and rejects the sign-in otherwise.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import msgspec

from gateway.oauth.clients import hash_secret
from gateway.oauth.metadata import SUPPORTED_SCOPES
from gateway.store import Store, TypedStore

CONSENT_MEMORY_TTL = 30 * 24 * 3600
"""Seconds an approval is remembered."""

COOKIE_NAME = "agent_proxy_consent"
SECURE_COOKIE_NAME = "__Host-agent_proxy_consent"
"""The cookie name over https; the ``__Host-`` prefix keeps it on this host."""


class ConsentRecord(msgspec.Struct, kw_only=True):
    """A user's approval of one client.

    Attributes:
        user_iss: The IdP that signed the user in.
        user_sub: The user's subject there.
        client_id: The approved client.
        backends: The backends the user approved the client for.
        granted_at: When the latest approval was given (epoch seconds).
        scopes: The scopes approved, per backend.
    """

    user_iss: str
    user_sub: str
    client_id: str
    backends: list[str]
    granted_at: int
    scopes: dict[str, list[str]] = msgspec.field(default_factory=dict)


class BrowserUser(msgspec.Struct, kw_only=True):
    """The user who last approved a client in one browser."""

    user_iss: str
    user_sub: str


class ConsentStore:
    """Remembered approvals in the state store."""

    def __init__(self, store: Store) -> None:
        self._consents = TypedStore(store, "consent", ConsentRecord)
        self._browsers = TypedStore(store, "consent_browser", BrowserUser)

    async def remember(
        self,
        *,
        user_iss: str,
        user_sub: str,
        client_id: str,
        backend: str,
        browser_id: str | None,
        scopes: list[str] | None = None,
    ) -> str:
        """Record an approval and bind the browser to the user.

        Args:
            user_iss: The IdP that signed the user in.
            user_sub: The user's subject there.
            client_id: The approved client.
            backend: The backend the client was approved for.
            browser_id: The browser's current cookie value, if it sent one.
            scopes: The scopes approved for the backend; they add to the
                ones approved before.

        Returns:
            The cookie value to set: a new random one, so a browser id
            changes with every approval.
        """
        key = _consent_key(user_iss, user_sub, client_id)
        record = await self._consents.get(key)
        backends = sorted({backend, *(record.backends if record else [])})
        approved = dict(record.scopes) if record else {}
        approved[backend] = sorted({*approved.get(backend, []), *(scopes or [])})
        await self._consents.set(
            key,
            ConsentRecord(
                user_iss=user_iss,
                user_sub=user_sub,
                client_id=client_id,
                backends=backends,
                granted_at=int(time.time()),
                scopes=approved,
            ),
            CONSENT_MEMORY_TTL,
        )
        if browser_id:
            await self._browsers.delete(hash_secret(browser_id[:100]))
        new_browser_id = secrets.token_urlsafe(32)
        await self._browsers.set(
            hash_secret(new_browser_id),
            BrowserUser(user_iss=user_iss, user_sub=user_sub),
            CONSENT_MEMORY_TTL,
        )
        return new_browser_id

    async def remembered_user(
        self,
        browser_id: str | None,
        *,
        client_id: str,
        backend: str,
        scopes: list[str] | None = None,
    ) -> BrowserUser | None:
        """Return the browser's user, if that user approved client and backend.

        A request for scopes beyond the approved ones (a step-up) returns
        None, so the user sees the consent page again.
        """
        if not browser_id or len(browser_id) > 100:
            return None
        user = await self._browsers.get(hash_secret(browser_id))
        if user is None:
            return None
        record = await self._consents.get(
            _consent_key(user.user_iss, user.user_sub, client_id)
        )
        if record is None or backend not in record.backends:
            return None
        approved = set(record.scopes.get(backend, []))
        # Every sign-in gets the base scopes; approving a client approves them.
        if not set(scopes or []) <= approved | set(SUPPORTED_SCOPES):
            return None
        return user

    async def forget_browser(self, browser_id: str | None) -> None:
        """Drop a browser's binding, so its next sign-in shows the page."""
        if browser_id and len(browser_id) <= 100:
            await self._browsers.delete(hash_secret(browser_id))

    async def get(
        self, user_iss: str, user_sub: str, client_id: str
    ) -> ConsentRecord | None:
        """Return a user's approval of a client, or None."""
        return await self._consents.get(_consent_key(user_iss, user_sub, client_id))

    async def revoke(self, user_iss: str, user_sub: str, client_id: str) -> bool:
        """Forget a user's approval of a client; the next sign-in shows the page.

        Grants already issued stay valid; end them with the grant store.

        Returns:
            Whether there was an approval to forget.
        """
        key = _consent_key(user_iss, user_sub, client_id)
        if await self._consents.get(key) is None:
            return False
        await self._consents.delete(key)
        return True

    async def find(
        self,
        *,
        user_iss: str | None = None,
        user_sub: str | None = None,
        client_id: str | None = None,
    ) -> list[ConsentRecord]:
        """Return the approvals that match every argument that is not None.

        This reads every approval in the store, so it is for admin commands
        and not for request paths.
        """

        def matches(record: ConsentRecord) -> bool:
            return (
                (user_iss is None or record.user_iss == user_iss)
                and (user_sub is None or record.user_sub == user_sub)
                and (client_id is None or record.client_id == client_id)
            )

        return [record async for _, record in self._consents.scan() if matches(record)]


def cookie_name(issuer: str) -> str:
    """Return the consent cookie's name for a gateway at ``issuer``."""
    return SECURE_COOKIE_NAME if issuer.startswith("https://") else COOKIE_NAME


def _consent_key(user_iss: str, user_sub: str, client_id: str) -> str:
    joined = "\0".join((user_iss, user_sub, client_id))
    return hashlib.sha256(joined.encode()).hexdigest()
