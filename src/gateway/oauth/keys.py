"""The keys that sign the gateway's access tokens, persisted across restarts.

The key file is a JWK Set of private keys, newest first. The newest key signs.
Every key in the file is published in the JWKS, so tokens signed before a
rotation stay verifiable until the old key is dropped from the file.

Another process sharing the key file (a second replica, or one restarted with
another algorithm) may rotate it while this one runs. A token whose ``kid``
these keys lack then makes :meth:`SigningKeys.reload_for_unknown_kid` read the
file again: at most once per :data:`RELOAD_INTERVAL` seconds, shared by
concurrent callers, and keeping the loaded keys when the file cannot be read.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import anyio
import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import extract_compact, validate_compact

log = structlog.get_logger("gateway.oauth.keys")

SUPPORTED_ALGORITHMS = frozenset({"ES256", "RS256"})
"""Algorithms the gateway signs with; verification never accepts others."""

MAX_TOKEN_LENGTH = 16 * 1024
"""Longer compact JWTs are rejected before any parsing."""

MAX_KEYS = 3
"""Keys kept in the file after a rotation: the new one and the newest old ones."""

RELOAD_INTERVAL = 30.0
"""Minimum seconds between two reads of the key file caused by unknown ``kid``s."""

SigningKey = ECKey | RSAKey


class TokenVerificationError(Exception):
    """A JWT whose signature cannot be verified.

    Attributes:
        reason: ``malformed``, ``algorithm_not_allowed``, ``unknown_key`` or
            ``bad_signature``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SigningKeys:
    """The gateway's signing keys: the newest signs, all of them verify.

    Create with :meth:`load_or_create`; the constructor takes already loaded
    keys (newest first) and the file they belong to, if any.
    """

    def __init__(
        self,
        keys: Sequence[SigningKey],
        *,
        path: pathlib.Path | None = None,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        if not keys:
            msg = "SigningKeys needs at least one key"
            raise ValueError(msg)
        for key in keys:
            if not key.is_private:
                msg = (
                    f"signing key {key.kid!r} is a public key; a private key is needed"
                )
                raise ValueError(msg)
        self._use(keys)
        self.path = path
        self._reload_interval = reload_interval
        self._reload_lock = anyio.Lock()
        self._reloaded_at: float | None = None
        self._reload_changed = False

    def _use(self, keys: Sequence[SigningKey]) -> None:
        self._keys: list[SigningKey] = list(keys)
        self._by_kid: dict[str, SigningKey] = {_kid(key): key for key in self._keys}

    @classmethod
    def load_or_create(
        cls, path: pathlib.Path, algorithm: str = "ES256"
    ) -> SigningKeys:
        """Load the key file, creating it with a new key when it does not exist.

        When the newest key in the file uses another algorithm than
        ``algorithm``, a new key is generated and put first (a rotation), so
        tokens signed by the old key keep verifying while it stays listed.

        Raises:
            ValueError: ``algorithm`` is not supported or the file is not a
                JWK Set of private ES256/RS256 keys.
        """
        if algorithm not in SUPPORTED_ALGORITHMS:
            msg = (
                f"signing algorithm {algorithm!r} is not supported; "
                f"use one of {sorted(SUPPORTED_ALGORITHMS)}"
            )
            raise ValueError(msg)
        if path.exists():
            keys = _read_key_file(path)
            instance = cls(keys, path=path)
            if keys[0].alg != algorithm:
                log.info(
                    "signing_keys.rotated",
                    reason="algorithm_changed",
                    old_kid=_kid(keys[0]),
                    algorithm=algorithm,
                )
                instance.rotate(algorithm)
            return instance
        instance = cls([generate_key(algorithm)], path=path)
        instance.save()
        log.info("signing_keys.created", path=str(path), kid=instance.kid)
        return instance

    @property
    def kid(self) -> str:
        """The ``kid`` of the key that signs new tokens."""
        return _kid(self._keys[0])

    @property
    def algorithm(self) -> str:
        """The algorithm of the key that signs new tokens."""
        alg = self._keys[0].alg
        assert alg is not None  # every loaded or generated key has "alg"
        return alg

    def rotate(self, algorithm: str | None = None) -> None:
        """Generate a new signing key and keep the previous ones for verification.

        At most :data:`MAX_KEYS` keys are kept; the oldest are dropped. The key
        file, if any, is rewritten.
        """
        key = generate_key(algorithm or self.algorithm)
        self._use([key, *self._keys][:MAX_KEYS])
        if self.path is not None:
            self.save()

    def knows(self, kid: str) -> bool:
        """Return whether a key with this ``kid`` is loaded."""
        return kid in self._by_kid

    async def reload_for_unknown_kid(self) -> bool:
        """Read the key file again because a token named a ``kid`` not loaded.

        Reads at most once per ``reload_interval`` seconds; concurrent callers
        share one read. A file that is missing or invalid leaves the loaded
        keys in place. Keys without a file are never reloaded.

        Returns:
            Whether the loaded key set changed.
        """
        if self.path is None:
            return False
        started = time.monotonic()
        async with self._reload_lock:
            last = self._reloaded_at
            # Another caller read the file while this one waited: share its result.
            if last is not None and last >= started:
                return self._reload_changed
            if last is not None and started - last < self._reload_interval:
                return False
            self._reloaded_at = time.monotonic()
            self._reload_changed = False
            try:
                keys = await anyio.to_thread.run_sync(_read_key_file, self.path)
            except (OSError, ValueError) as exc:
                log.warning(
                    "signing_keys.reload_failed",
                    path=str(self.path),
                    error=str(exc),
                    kept=len(self._keys),
                )
                return False
            if [_kid(key) for key in keys] == [_kid(key) for key in self._keys]:
                return False
            self._use(keys)
            self._reload_changed = True
            log.info("signing_keys.reloaded", path=str(self.path), kid=self.kid)
            return True

    def save(self) -> None:
        """Write the private keys to the key file with mode 0600, atomically."""
        if self.path is None:
            msg = "these signing keys have no key file"
            raise ValueError(msg)
        document = {"keys": [key.as_dict(private=True) for key in self._keys]}
        _write_private_file(self.path, json.dumps(document, indent=2).encode())

    def sign(self, claims: dict[str, Any], *, typ: str = "at+jwt") -> str:
        """Return a compact JWS of ``claims`` signed by the newest key.

        The header carries ``alg``, ``kid`` and ``typ``.
        """
        key = self._keys[0]
        header = {"alg": self.algorithm, "kid": _kid(key), "typ": typ}
        return jwt.encode(header, claims, key, algorithms=[self.algorithm])

    def jwks(self) -> dict[str, Any]:
        """Return the public JWK Set of every key, newest first."""
        return {
            "keys": [
                key.as_dict(private=False, use="sig", alg=key.alg, kid=_kid(key))
                for key in self._keys
            ]
        }

    def verify(
        self, token: str, *, algorithms: Sequence[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify a compact JWS signed by one of these keys.

        Only the signature is checked, and the caller validates the claims.
        The header must name a ``kid`` of these keys and an ``alg`` that is in
        ``algorithms``. Tokens with ``alg`` ``none`` or an HMAC algorithm, and
        tokens with a ``crit`` or ``b64`` header, are always rejected.

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
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
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


def generate_key(algorithm: str) -> SigningKey:
    """Generate a key for ``algorithm`` with its RFC 7638 thumbprint as ``kid``."""
    parameters: dict[str, Any] = {"alg": algorithm, "use": "sig"}
    if algorithm == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    if algorithm == "RS256":
        return RSAKey.generate_key(2048, parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    msg = f"cannot generate a key for algorithm {algorithm!r}"
    raise ValueError(msg)


def _kid(key: SigningKey) -> str:
    kid = key.kid
    assert kid is not None  # loaded and generated keys always have a kid
    return kid


def _read_key_file(path: pathlib.Path) -> list[SigningKey]:
    try:
        document = json.loads(path.read_bytes())
    except ValueError as exc:
        msg = f"signing key file {str(path)!r} is not valid JSON: {exc}"
        raise ValueError(msg) from None
    if isinstance(document, dict) and "keys" not in document and "kty" in document:
        document = {"keys": [document]}
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        msg = (
            f"signing key file {str(path)!r} must be a JWK Set "
            "with a non-empty 'keys' array"
        )
        raise ValueError(msg)
    keys: list[SigningKey] = []
    for index, entry in enumerate(entries):
        keys.append(_import_private_key(entry, f"{path}: keys[{index}]"))
    return keys


def _import_private_key(entry: Any, where: str) -> SigningKey:
    if not isinstance(entry, dict):
        msg = f"{where} must be a JWK object"
        raise ValueError(msg)
    alg = entry.get("alg")
    kty = entry.get("kty")
    key: SigningKey
    try:
        if alg == "ES256" and kty == "EC" and entry.get("crv") == "P-256":
            key = ECKey.import_key(entry)
        elif alg == "RS256" and kty == "RSA":
            key = RSAKey.import_key(entry)
        else:
            msg = (
                f"{where} has alg {alg!r} and kty {kty!r}; expected ES256 with "
                "an EC P-256 key or RS256 with an RSA key"
            )
            raise ValueError(msg)
    except JoseError as exc:
        msg = f"{where} is not a valid JWK: {exc}"
        raise ValueError(msg) from None
    if not key.is_private:
        msg = f"{where} is a public key; the key file must hold private keys"
        raise ValueError(msg)
    key.ensure_kid()
    return key


def _write_private_file(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
