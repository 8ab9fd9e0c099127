"""Access tokens revoked before they expire (RFC 7009), by their ``jti``.

An access token is a signed JWT that stays valid until its ``exp``, so the
gateway remembers each revoked one until then. Code that verifies access
tokens must call :func:`is_access_token_revoked` after the signature and
claims check, as the authenticate stage does.
"""

from __future__ import annotations

import time

from gateway.store import Store

NAMESPACE = "revoked_access_token"

REVOCATION_MARGIN = 300
"""Seconds a revocation outlives the token's ``exp``: the maximum clock-skew
leeway the authenticate stage accepts, so leeway never revives the token."""


async def revoke_access_token(store: Store, token_id: str, expires_at: float) -> None:
    """Remember that the access token ``token_id`` (its ``jti``) is revoked."""
    ttl = max(1.0, expires_at - time.time() + REVOCATION_MARGIN)
    await store.set(NAMESPACE, token_id, b"1", ttl)


async def is_access_token_revoked(store: Store, token_id: str) -> bool:
    """Return whether the access token ``token_id`` (its ``jti``) was revoked."""
    return await store.get(NAMESPACE, token_id) is not None
