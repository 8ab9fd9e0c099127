"""Authorization codes and rotating refresh tokens of the org authorization server.

Codes and refresh tokens are random strings; the store keys them by their
SHA-256 digest, so it never stores a usable credential. Each code starts a
refresh token *family*. Presenting a used code or a rotated refresh token
again revokes the whole family (RFC 6749 section 4.1.2 and RFC 9700 section
4.14.2), because one of the two holders must be an attacker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from ._http import OAuthError
from ._store import ExpiringStore, StoreFullError

__all__ = ["GrantStore", "RefreshFamily", "RefreshGrant", "SignIn"]

logger = structlog.get_logger(__name__)

_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


@dataclass(frozen=True, slots=True)
class SignIn:
    """A completed sign-in, which an authorization code stands for."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str
    user: str
    """Key of the user in the settings."""
    auth_time: int


@dataclass(slots=True)
class RefreshFamily:
    """The refresh tokens that descend from one authorization code."""

    family_id: str = field(default_factory=lambda: secrets.token_hex(8))
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """The user, client and scopes that a refresh token grants access for."""

    family: RefreshFamily
    client_id: str
    user: str
    scopes: tuple[str, ...]
    auth_time: int


@dataclass(slots=True)
class _CodeRecord:
    sign_in: SignIn
    family: RefreshFamily | None = None


@dataclass(slots=True)
class _RefreshRecord:
    grant: RefreshGrant
    used: bool = False


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def s256_challenge(verifier: str) -> str:
    """Return the RFC 7636 S256 code challenge of a code verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _busy(exc: StoreFullError) -> OAuthError:
    return OAuthError("temporarily_unavailable", str(exc))


class GrantStore:
    """Issue and redeem codes and refresh tokens, bounded and in memory.

    Args:
        code_ttl: Lifetime of a code, in seconds.
        refresh_ttl: Lifetime of each refresh token, in seconds.
        max_entries: Bound on stored codes and on stored refresh tokens.
        clock: Returns the current time in seconds.
    """

    def __init__(
        self,
        *,
        code_ttl: int,
        refresh_ttl: int,
        max_entries: int,
        clock: Callable[[], float],
    ) -> None:
        self._code_ttl = code_ttl
        self._refresh_ttl = refresh_ttl
        self._clock = clock
        self._codes: ExpiringStore[_CodeRecord] = ExpiringStore(
            max_entries=max_entries, clock=clock
        )
        self._refresh: ExpiringStore[_RefreshRecord] = ExpiringStore(
            max_entries=max_entries, clock=clock
        )

    def issue_code(self, sign_in: SignIn) -> str:
        """Return a new single-use authorization code for ``sign_in``.

        Raises:
            OAuthError: ``temporarily_unavailable`` when the store is full.
        """
        code = secrets.token_urlsafe(32)
        expires_at = self._clock() + self._code_ttl
        try:
            self._codes.put(_digest(code), _CodeRecord(sign_in), expires_at=expires_at)
        except StoreFullError as exc:
            raise _busy(exc) from exc
        return code

    def redeem_code(
        self, code: str, *, client_id: str, redirect_uri: str | None, verifier: str
    ) -> tuple[SignIn, RefreshFamily]:
        """Redeem a code once and return its sign-in and new refresh family.

        Raises:
            OAuthError: ``invalid_grant`` when the code is unknown, expired,
                already used, issued to another client or redirect URI, or the
                PKCE verifier does not match.
        """
        record = self._codes.get(_digest(code))
        if record is None:
            raise OAuthError(
                "invalid_grant", "the authorization code is invalid or expired"
            )
        sign_in = record.sign_in
        if record.family is not None:
            record.family.revoked = True
            logger.warning(
                "devidp.authorization_code_reused",
                client_id=client_id,
                family_id=record.family.family_id,
            )
            raise OAuthError("invalid_grant", "the authorization code was already used")
        if sign_in.client_id != client_id:
            raise OAuthError(
                "invalid_grant", "the authorization code belongs to another client"
            )
        if redirect_uri != sign_in.redirect_uri:
            raise OAuthError(
                "invalid_grant",
                "redirect_uri must equal the one in the authorization request",
            )
        if not _CODE_VERIFIER.match(verifier):
            raise OAuthError(
                "invalid_grant", "code_verifier must be 43 to 128 unreserved characters"
            )
        if not hmac.compare_digest(s256_challenge(verifier), sign_in.code_challenge):
            raise OAuthError(
                "invalid_grant", "code_verifier does not match code_challenge"
            )
        record.family = RefreshFamily()
        return sign_in, record.family

    def issue_refresh_token(self, grant: RefreshGrant) -> str:
        """Return a new refresh token for ``grant``.

        Raises:
            OAuthError: ``temporarily_unavailable`` when the store is full.
        """
        token = secrets.token_urlsafe(32)
        expires_at = self._clock() + self._refresh_ttl
        try:
            self._refresh.put(
                _digest(token), _RefreshRecord(grant), expires_at=expires_at
            )
        except StoreFullError as exc:
            raise _busy(exc) from exc
        return token

    def revoke_user(self, user: str) -> int:
        """Revoke every refresh token family of a user; return how many were live.

        Args:
            user: Key of the user in the settings.
        """
        families = {
            id(record.grant.family): record.grant.family
            for record in self._refresh.values()
            if record.grant.user == user and not record.grant.family.revoked
        }
        for family in families.values():
            family.revoked = True
        return len(families)

    def rotate_refresh_token(self, token: str, *, client_id: str) -> RefreshGrant:
        """Consume a refresh token and return its grant, for the caller to reissue.

        Raises:
            OAuthError: ``invalid_grant`` when the token is unknown, expired,
                revoked, issued to another client, or was already used; reuse
                also revokes its family.
        """
        record = self._refresh.get(_digest(token))
        if record is None:
            raise OAuthError("invalid_grant", "the refresh token is invalid or expired")
        grant = record.grant
        if grant.client_id != client_id:
            raise OAuthError(
                "invalid_grant", "the refresh token belongs to another client"
            )
        if grant.family.revoked:
            raise OAuthError("invalid_grant", "the refresh token was revoked")
        if record.used:
            grant.family.revoked = True
            logger.warning(
                "devidp.refresh_token_reused",
                client_id=client_id,
                family_id=grant.family.family_id,
            )
            raise OAuthError(
                "invalid_grant",
                "the refresh token was already used, so its whole family is revoked",
            )
        record.used = True
        return grant
