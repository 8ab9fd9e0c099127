"""Signing keys of the dev IdP, and JWT verification shared by its servers.

Every token the dev IdP issues is an RS256 JWS with a ``kid`` header. Keys are
RSA 2048 and live in memory unless the caller supplies them (for example from
a file, with :meth:`SigningKey.from_jwk`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jws import extract_compact

__all__ = [
    "SIGNING_ALGORITHM",
    "JwtRejectedError",
    "SigningKey",
    "jwks_document",
    "public_key_set",
    "read_unverified_header",
    "verify_jwt",
]

SIGNING_ALGORITHM = "RS256"
"""The only algorithm the dev IdP signs with and accepts from itself."""

_MAX_JWT_LENGTH = 16 * 1024


class JwtRejectedError(Exception):
    """A JWT failed verification. The message gives the reason and never the token."""


class SigningKey:
    """An RSA private key with its ``kid``, signing RS256 JWTs."""

    def __init__(self, key: RSAKey) -> None:
        """Wrap a private RSA JWK.

        Raises:
            ValueError: The key is public only or has no ``kid``.
        """
        if not key.is_private:
            msg = "SigningKey needs a private RSA key"
            raise ValueError(msg)
        if not key.kid:
            msg = "SigningKey needs a key with a 'kid'"
            raise ValueError(msg)
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        """Generate an RSA 2048 key whose ``kid`` is its RFC 7638 thumbprint."""
        key = RSAKey.generate_key(
            2048, parameters={"use": "sig", "alg": SIGNING_ALGORITHM}, auto_kid=True
        )
        return cls(key)

    @classmethod
    def from_jwk(cls, data: Mapping[str, Any]) -> SigningKey:
        """Load a private RSA JWK, such as one saved from :meth:`private_jwk`."""
        key = RSAKey.import_key(dict(data))
        if not key.kid:
            key = RSAKey.import_key(dict(data), parameters={"kid": key.thumbprint()})
        return cls(key)

    @property
    def kid(self) -> str:
        """Key id put in the header of every JWT this key signs."""
        kid = self._key.kid
        assert kid is not None  # checked in __init__
        return kid

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """Return a compact RS256 JWS of the claims with ``typ`` and ``kid`` headers."""
        header = {"alg": SIGNING_ALGORITHM, "kid": self.kid, "typ": typ}
        return jwt.encode(header, dict(claims), self._key, [SIGNING_ALGORITHM])

    def public_jwk(self) -> dict[str, Any]:
        """Return the public JWK, with ``kid``, ``use`` and ``alg``."""
        data = dict(self._key.as_dict(private=False))
        data.setdefault("use", "sig")
        data.setdefault("alg", SIGNING_ALGORITHM)
        return data

    def private_jwk(self) -> dict[str, Any]:
        """Return the private JWK, for saving the key; never publish it."""
        return dict(self._key.as_dict(private=True))


def jwks_document(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """Return the JWK Set of the public halves of the keys."""
    return {"keys": [key.public_jwk() for key in keys]}


def public_key_set(keys: Iterable[SigningKey]) -> KeySet:
    """Return a joserfc KeySet of the public halves of the keys."""
    return KeySet.import_key_set(jwks_document(keys))  # type: ignore[arg-type]


def read_unverified_header(token: str) -> dict[str, Any]:
    """Return the JOSE header of a compact JWS without checking its signature.

    Raises:
        JwtRejectedError: The value is not a compact JWS.
    """
    if len(token) > _MAX_JWT_LENGTH:
        msg = "the JWT is too long"
        raise JwtRejectedError(msg)
    try:
        return dict(extract_compact(token.encode("ascii")).headers())
    except (JoseError, ValueError, UnicodeError) as exc:
        msg = "the value is not a compact JWS"
        raise JwtRejectedError(msg) from exc


def verify_jwt(
    token: str,
    keys: KeySet,
    *,
    algorithms: Collection[str] = (SIGNING_ALGORITHM,),
    now: int,
    leeway: int,
    required_claims: Collection[str] = ("iss", "sub", "aud", "exp", "iat"),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify the signature and lifetime of a JWT and return (header, claims).

    The header must name a ``kid`` found in ``keys`` and an algorithm from
    ``algorithms``. ``exp`` must lie after ``now - leeway``; ``iat`` and
    ``nbf``, when present, must not lie after ``now + leeway``. Issuer,
    audience and ``typ`` are left to the caller, because each profile
    compares them differently.

    Raises:
        JwtRejectedError: Any check failed.
    """
    header = read_unverified_header(token)
    if header.get("alg") not in algorithms:
        msg = f"the JWT algorithm {header.get('alg')!r} is not allowed"
        raise JwtRejectedError(msg)
    if not isinstance(header.get("kid"), str):
        msg = "the JWT header has no 'kid'"
        raise JwtRejectedError(msg)
    try:
        decoded = jwt.decode(token, keys, algorithms=list(algorithms))
    except InvalidKeyIdError as exc:
        msg = f"no trusted key has the kid {header['kid']!r}"
        raise JwtRejectedError(msg) from exc
    except JoseError as exc:
        msg = f"the JWT signature is invalid ({exc.error})"
        raise JwtRejectedError(msg) from exc
    claims = decoded.claims
    missing = sorted(name for name in required_claims if claims.get(name) is None)
    if missing:
        msg = f"the JWT lacks the claims {missing!r}"
        raise JwtRejectedError(msg)
    registry = jwt.JWTClaimsRegistry(now=now, leeway=leeway)
    try:
        registry.validate(claims)
    except ExpiredTokenError as exc:
        msg = "the JWT has expired"
        raise JwtRejectedError(msg) from exc
    except JoseError as exc:
        msg = f"the JWT claims are invalid ({exc.description or exc.error})"
        raise JwtRejectedError(msg) from exc
    return dict(decoded.header), claims
