"""Public JWK Sets of clients that authenticate with ``private_key_jwt``.

A pre-registered client's set comes from a file (``oauth.clients.<id>
.jwks_file``), and a Client ID Metadata Document client's set from the
document's ``jwks`` member or its ``jwks_uri`` (RFC 7591 section 2). Either
way the set must hold public RSA or EC keys only, so no symmetric or private
key is ever used to check a client assertion.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

__all__ = ["MAX_KEY_SET_BYTES", "decode_key_set", "document_key_set", "public_key_set"]

MAX_KEY_SET_BYTES = 64 * 1024
"""Largest JWK Set file or ``jwks_uri`` document accepted."""

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def public_key_set(document: Any) -> dict[str, Any]:
    """Check that ``document`` is a JWK Set of public RSA or EC keys; return it.

    Raises:
        ValueError: It is not a JWK Set with a non-empty ``keys`` array, a
            key is private or symmetric, or a key cannot be imported. The
            message is a phrase such as ``not a JSON object``.
    """
    if not isinstance(document, dict):
        msg = "not a JSON object"
        raise ValueError(msg)
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        msg = "not a JWK Set with a non-empty 'keys' array"
        raise ValueError(msg)
    for key in keys:
        if not isinstance(key, dict) or _PRIVATE_MEMBERS & key.keys():
            msg = "the set must hold public RSA or EC keys only"
            raise ValueError(msg)
    try:
        KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as exc:
        msg = f"a key cannot be imported ({type(exc).__name__})"
        raise ValueError(msg) from None
    result: dict[str, Any] = document
    return result


def decode_key_set(data: bytes) -> dict[str, Any]:
    """Decode JSON bytes of at most :data:`MAX_KEY_SET_BYTES` as a public JWK Set.

    Raises:
        ValueError: The bytes are too large, not JSON, or not such a set.
    """
    if len(data) > MAX_KEY_SET_BYTES:
        msg = f"larger than {MAX_KEY_SET_BYTES} bytes"
        raise ValueError(msg)
    try:
        document = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        msg = "not JSON"
        raise ValueError(msg) from None
    return public_key_set(document)


async def document_key_set(
    document: dict[str, Any], fetch: Callable[[str], Awaitable[bytes]]
) -> dict[str, Any]:
    """Return the key set of a ``private_key_jwt`` client metadata document.

    Args:
        document: The decoded document.
        fetch: Fetches a ``jwks_uri`` with the document fetch's protections
            and returns the body.

    Raises:
        ValueError: The document has neither or both of ``jwks`` and
            ``jwks_uri``, or its set is not a public JWK Set. The message
            names the member.
    """
    inline = document.get("jwks")
    uri = document.get("jwks_uri")
    if (inline is None) == (uri is None):
        msg = "a private_key_jwt client needs exactly one of jwks and jwks_uri"
        raise ValueError(msg)
    if inline is not None:
        try:
            return public_key_set(inline)
        except ValueError as exc:
            msg = f"jwks: {exc}"
            raise ValueError(msg) from None
    if not isinstance(uri, str):
        msg = "jwks_uri must be a URL"
        raise ValueError(msg)
    body = await fetch(uri)
    try:
        return decode_key_set(body)
    except ValueError as exc:
        msg = f"the jwks_uri document: {exc}"
        raise ValueError(msg) from None
