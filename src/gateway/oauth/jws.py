"""Signature checks of compact JWS tokens against the gateway's own keys."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import extract_compact, validate_compact

SUPPORTED_ALGORITHMS = frozenset({"ES256", "RS256"})
"""Algorithms the gateway signs with; verification never accepts others."""

MAX_TOKEN_LENGTH = 16 * 1024
"""Longer compact JWTs are rejected before any parsing."""


class TokenVerificationError(Exception):
    """A JWT whose signature cannot be verified.

    Attributes:
        reason: ``malformed``, ``algorithm_not_allowed``, ``unknown_key`` or
            ``bad_signature``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def verify_compact_jws(
    token: str,
    keys_by_kid: Mapping[str, ECKey | RSAKey],
    algorithms: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS signed by one of ``keys_by_kid``.

    Only the signature is checked, and the caller validates the claims. The
    header must name a ``kid`` of these keys and an ``alg`` that is in
    ``algorithms`` and :data:`SUPPORTED_ALGORITHMS`. Tokens with ``alg``
    ``none`` or an HMAC algorithm, and tokens with a ``crit`` or ``b64``
    header, are always rejected.

    Returns:
        The protected header and the claims.

    Raises:
        TokenVerificationError: With a ``reason`` saying what failed.
    """
    allowed = [alg for alg in algorithms if alg in SUPPORTED_ALGORITHMS]
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenVerificationError(
            "the token is longer than the maximum accepted length",
            reason="malformed",
        )
    try:
        obj = extract_compact(token.encode("ascii"))
    except (JoseError, ValueError, TypeError, UnicodeError):
        raise TokenVerificationError(
            "the token is not a compact JWS", reason="malformed"
        ) from None
    header = obj.headers()
    if "crit" in header or "b64" in header:
        raise TokenVerificationError(
            "the token header has a 'crit' or 'b64' parameter; neither is accepted",
            reason="malformed",
        )
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise TokenVerificationError(
            f"the token algorithm {alg!r} is not allowed; allowed: {allowed}",
            reason="algorithm_not_allowed",
        )
    kid = header.get("kid")
    key = keys_by_kid.get(kid) if isinstance(kid, str) else None
    if key is None or key.alg != alg:
        raise TokenVerificationError(
            f"no signing key matches kid {kid!r} and alg {alg!r}",
            reason="unknown_key",
        )
    try:
        valid = validate_compact(obj, key, algorithms=[alg])
    except (JoseError, ValueError):
        valid = False
    if not valid:
        raise TokenVerificationError(
            "the token signature is invalid", reason="bad_signature"
        )
    try:
        claims = json.loads(obj.payload or b"")
    except ValueError:
        claims = None
    if not isinstance(claims, dict):
        raise TokenVerificationError(
            "the token payload is not a JSON object", reason="malformed"
        )
    return dict(header), claims
