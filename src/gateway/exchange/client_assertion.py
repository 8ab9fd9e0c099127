"""Client authentication at a token endpoint: shared secrets or ``private_key_jwt``.

``private_key_jwt`` (RFC 7523 section 2.2, OpenID Connect Core section 9) sends
a short-lived JWT signed with the client's private key instead of a secret.
Each assertion has ``iss`` and ``sub`` set to the client_id and ``aud`` set to
the exact token endpoint URL being called, because Okta rejects any other
``aud``. It also has ``iat``, an ``exp`` 60 seconds later and a random ``jti``,
so a server that remembers ``jti`` values accepts it only once.

The private key is a JWK in a JSON file. It is read when first used and again
whenever the file changes, so a key is rotated by replacing the file. Neither
the key nor an assertion ever appears in a message or a log line.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

import httpx
import msgspec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "ASSERTION_LIFETIME",
    "CLIENT_ASSERTION_TYPE",
    "ClientAssertionSigner",
    "ClientKeyError",
    "authenticate_request",
    "load_signer",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60
"""Seconds a client assertion stays valid."""

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]

# The curve each ECDSA algorithm needs (RFC 7518 section 3.4).
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_MAX_KEY_FILE_BYTES = 64 * 1024
_MAX_CACHED_SIGNERS = 32


class ClientKeyError(ValueError):
    """A private key file is missing, unreadable or unfit for the algorithm.

    The message names the file and the problem, never key material.
    """


class ClientAssertionSigner:
    """Signs ``private_key_jwt`` client assertions with one private key.

    Args:
        key: A private RSA or EC JWK.
        kid: The ``kid`` header; it must name the key registered at the server.
        algorithm: The JWS algorithm, such as ``RS256`` or ``ES256``.
        clock: Returns the current time in seconds since the epoch.

    Raises:
        ClientKeyError: The key is public only, or does not suit ``algorithm``.
    """

    def __init__(
        self,
        key: RSAKey | ECKey,
        *,
        kid: str,
        algorithm: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_key(key, algorithm, "the key")
        if not kid:
            msg = "the key has no 'kid'; set one in the JWK or in the config"
            raise ClientKeyError(msg)
        self._key = key
        self.kid = kid
        self.algorithm = algorithm
        self._clock = clock

    def assertion(self, client_id: str, token_endpoint: str) -> str:
        """Return a new client assertion for one request to ``token_endpoint``.

        Args:
            client_id: The client's id at that server: ``iss`` and ``sub``.
            token_endpoint: The exact URL the request goes to: ``aud``.
        """
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(24),
        }
        header = {"alg": self.algorithm, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[self.algorithm])


_signers: dict[tuple[str, int, int, str, str], ClientAssertionSigner] = {}


def load_signer(path: str, *, kid: str, algorithm: str) -> ClientAssertionSigner:
    """Return a signer for the private JWK in ``path``, re-read when the file changes.

    Args:
        path: A JSON file holding one private JWK; relative paths are resolved
            against the working directory.
        kid: The ``kid`` to send; the JWK's own ``kid`` when empty.
        algorithm: The JWS algorithm.

    Raises:
        ClientKeyError: The file cannot be read or contains no usable private key.
    """
    label = f"private key file {path!r}"
    try:
        stat = os.stat(path)
    except OSError as exc:
        msg = f"{label} cannot be read: {exc.strerror or type(exc).__name__}"
        raise ClientKeyError(msg) from None
    cache_key = (path, stat.st_mtime_ns, stat.st_size, kid, algorithm)
    signer = _signers.get(cache_key)
    if signer is not None:
        return signer
    key = _read_key(path, label)
    try:
        signer = ClientAssertionSigner(
            key, kid=kid or key.kid or "", algorithm=algorithm
        )
    except ClientKeyError as exc:
        raise ClientKeyError(f"{label}: {exc}") from None
    if len(_signers) >= _MAX_CACHED_SIGNERS:
        _signers.clear()
    _signers[cache_key] = signer
    return signer


def authenticate_request(
    form: dict[str, str],
    *,
    method: AuthMethod,
    client_id: str,
    client_secret: str,
    token_endpoint: str,
    key_file: str = "",
    key_id: str = "",
    algorithm: str = "RS256",
) -> tuple[dict[str, str], httpx.Auth | None]:
    """Add client authentication to a token request.

    Args:
        form: The request parameters; not modified.
        method: How the client authenticates.
        client_id: The client's id at the server.
        client_secret: Its secret, for the ``client_secret_*`` methods.
        token_endpoint: The URL the request goes to, the assertion ``aud``.
        key_file: The private JWK file, for ``private_key_jwt``.
        key_id: The ``kid`` to send, for ``private_key_jwt``.
        algorithm: The JWS algorithm, for ``private_key_jwt``.

    Returns:
        The form with ``client_id`` and the method's parameters, and the
        ``httpx.Auth`` to send (HTTP Basic for ``client_secret_basic``).

    Raises:
        ClientKeyError: ``private_key_jwt`` without a usable key.
    """
    result = dict(form)
    result["client_id"] = client_id
    if method == "private_key_jwt":
        signer = load_signer(key_file, kid=key_id, algorithm=algorithm)
        result["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        result["client_assertion"] = signer.assertion(client_id, token_endpoint)
        return result, None
    if method == "client_secret_post":
        result["client_secret"] = client_secret
        return result, None
    # RFC 6749 section 2.3.1: form-encode both parts before Basic encoding.
    return result, httpx.BasicAuth(
        quote(client_id, safe=""), quote(client_secret, safe="")
    )


def _read_key(path: str, label: str) -> RSAKey | ECKey:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        msg = f"{label} cannot be read: {exc.strerror or type(exc).__name__}"
        raise ClientKeyError(msg) from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        msg = f"{label} is larger than {_MAX_KEY_FILE_BYTES} bytes"
        raise ClientKeyError(msg)
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        msg = f"{label} is not JSON"
        raise ClientKeyError(msg) from None
    if not isinstance(value, dict):
        msg = f"{label} must contain one JWK object"
        raise ClientKeyError(msg)
    kty = value.get("kty")
    try:
        if kty == "RSA":
            return RSAKey.import_key(value)
        if kty == "EC":
            return ECKey.import_key(value)
    except (JoseError, ValueError, TypeError) as exc:
        msg = f"{label} holds an invalid {kty} key ({type(exc).__name__})"
        raise ClientKeyError(msg) from None
    msg = f"{label} has kty {kty!r}; expected 'RSA' or 'EC'"
    raise ClientKeyError(msg)


def _check_key(key: RSAKey | ECKey, algorithm: str, label: str) -> None:
    if not key.is_private:
        msg = f"{label} is a public key; a private key is needed to sign"
        raise ClientKeyError(msg)
    if algorithm in _RSA_ALGORITHMS:
        if not isinstance(key, RSAKey):
            msg = f"{label} is not an RSA key, which {algorithm} needs"
            raise ClientKeyError(msg)
        return
    curve = _CURVES.get(algorithm)
    if curve is None:
        msg = f"algorithm {algorithm!r} is not supported for client assertions"
        raise ClientKeyError(msg)
    if not isinstance(key, ECKey) or key.curve_name != curve:
        msg = f"{label} is not an EC {curve} key, which {algorithm} needs"
        raise ClientKeyError(msg)
