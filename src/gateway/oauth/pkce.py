"""PKCE (RFC 7636) with the S256 method, the only one the gateway accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
# BASE64URL(SHA256(...)) without padding is always 43 characters.
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def new_code_verifier() -> str:
    """Return a random code verifier of 64 unreserved characters (384 bits)."""
    return secrets.token_urlsafe(48)


def s256_challenge(verifier: str) -> str:
    """Return ``BASE64URL(SHA256(verifier))`` without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_valid_verifier(verifier: str) -> bool:
    """Return whether ``verifier`` has the RFC 7636 section 4.1 syntax."""
    return bool(_VERIFIER.match(verifier))


def is_valid_challenge(challenge: str) -> bool:
    """Return whether ``challenge`` can be an S256 code challenge."""
    return bool(_CHALLENGE.match(challenge))


def verify_s256(verifier: str, challenge: str) -> bool:
    """Return whether ``verifier`` is well formed and hashes to ``challenge``."""
    if not is_valid_verifier(verifier):
        return False
    return hmac.compare_digest(s256_challenge(verifier), challenge)
