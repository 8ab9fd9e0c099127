"""``private_key_jwt`` client authentication at the gateway's token endpoint.

Two kinds of client authenticate with a client assertion (RFC 7523 section
2.2) instead of a secret: a client configured with
``token_endpoint_auth_method: private_key_jwt`` and a public JWK Set
(``jwks_file``), and a Client ID Metadata Document client whose document has
that method and a ``jwks`` or ``jwks_uri``. An assertion is accepted when:

- its signature verifies with a key of the client's set, using an asymmetric
  algorithm (RS*, PS* or ES*; never ``none`` or HMAC);
- ``iss`` and ``sub`` are the client id, and ``aud`` is the gateway's token
  endpoint URL exactly (a string, or an array with that one URL);
- ``exp`` is in the future and at most :data:`MAX_ASSERTION_LIFETIME` seconds
  ahead, and ``iat`` and ``nbf``, when present, are not in the future;
- ``jti`` is present and was not used before: each one is remembered until
  the assertion expires.

Times are checked with :data:`ASSERTION_LEEWAY` seconds of clock skew. No
assertion or key ever appears in a message or log line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import msgspec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from gateway.oauth.client_keys import MAX_KEY_SET_BYTES, decode_key_set
from gateway.oauth.client_metadata import ClientMetadataError, lookup_client
from gateway.oauth.clients import ClientRecord
from gateway.store import Store

if TYPE_CHECKING:
    from litestar import Request

    from gateway.config.model import OAuthClientConfig
    from gateway.runtime import Runtime

__all__ = [
    "ASSERTION_ALGORITHMS",
    "CLIENT_ASSERTION_TYPE",
    "MAX_ASSERTION_LIFETIME",
    "ClientAssertionError",
    "assertion_issuer",
    "authenticate_assertion",
    "read_client_jwks",
    "verify_client_assertion",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)
MAX_ASSERTION_LIFETIME = 300
"""Seconds an assertion's ``exp`` may lie ahead; longer-lived ones are rejected."""
ASSERTION_LEEWAY = 30
"""Seconds of clock skew tolerated on ``exp`` and ``iat``."""
USED_JTI_NAMESPACE = "client_assertion_jti"


class ClientAssertionError(Exception):
    """A client assertion that does not authenticate its client.

    Attributes:
        error: ``invalid_client``, or ``invalid_request`` for a malformed
            request.
        description: What failed, without the assertion itself.
    """

    def __init__(self, description: str, *, error: str = "invalid_client") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def read_client_jwks(
    clients: Mapping[str, OAuthClientConfig],
) -> dict[str, dict[str, Any]]:
    """Read the public JWK Set of every ``private_key_jwt`` client.

    Returns:
        The sets by client id.

    Raises:
        ValueError: A file is missing, unreadable, not a JWK Set, or contains
            a private or symmetric key; the message names the YAML key and file.
    """
    sets: dict[str, dict[str, Any]] = {}
    for client_id, client in clients.items():
        if client.token_endpoint_auth_method != "private_key_jwt":
            continue
        where = f"oauth.clients.{client_id}.jwks_file"
        try:
            sets[client_id] = _read_jwks(Path(client.jwks_file))
        except (OSError, ValueError) as exc:
            msg = f"{where}: cannot use {client.jwks_file}: {exc}"
            raise ValueError(msg) from None
    return sets


def _read_jwks(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        data = file.read(MAX_KEY_SET_BYTES + 1)
    return decode_key_set(data)


def assertion_issuer(assertion: str) -> str:
    """Return the ``iss`` of an assertion before its signature is checked.

    Raises:
        ClientAssertionError: The assertion is not a JWT with an ``iss``.
    """
    try:
        compact = extract_compact(assertion.encode("ascii"))
        claims = msgspec.json.decode(compact.payload)
    except (JoseError, UnicodeEncodeError, ValueError, msgspec.DecodeError):
        claims = None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise ClientAssertionError("the client assertion is not a JWT with an iss")
    return issuer


async def verify_client_assertion(
    store: Store,
    client: ClientRecord,
    assertion: str,
    *,
    token_endpoint: str,
    now: float | None = None,
) -> None:
    """Check that ``assertion`` authenticates ``client`` (see the module docstring).

    Raises:
        ClientAssertionError: ``invalid_client`` naming the failed check.
    """
    if client.jwks is None:
        raise ClientAssertionError("this client has no public keys configured")
    try:
        key_set = KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
        token = jwt.decode(assertion, key_set, algorithms=ASSERTION_ALGORITHMS)
    except (JoseError, ValueError, TypeError):
        raise ClientAssertionError(
            "the client assertion signature is invalid or its algorithm is not "
            f"one of {', '.join(ASSERTION_ALGORITHMS)}"
        ) from None
    claims = token.claims
    current = time.time() if now is None else now
    if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
        raise ClientAssertionError("the client assertion iss and sub must be client_id")
    aud = claims.get("aud")
    if aud != token_endpoint and aud != [token_endpoint]:
        raise ClientAssertionError(f"the client assertion aud must be {token_endpoint}")
    exp = claims.get("exp")
    if not _is_number(exp) or exp + ASSERTION_LEEWAY <= current:
        raise ClientAssertionError("the client assertion has expired or has no exp")
    if exp > current + MAX_ASSERTION_LIFETIME + ASSERTION_LEEWAY:
        raise ClientAssertionError(
            f"the client assertion must expire within {MAX_ASSERTION_LIFETIME} seconds"
        )
    iat = claims.get("iat")
    if iat is not None and (not _is_number(iat) or iat - ASSERTION_LEEWAY > current):
        raise ClientAssertionError("the client assertion iat is in the future")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_number(nbf) or nbf - ASSERTION_LEEWAY > current):
        raise ClientAssertionError(
            "the client assertion nbf is in the future or not a number"
        )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 200:
        raise ClientAssertionError("the client assertion has no jti")
    ttl = max(1.0, exp + ASSERTION_LEEWAY - current)
    key = f"{client.client_id}\n{jti}"
    if not await store.add(USED_JTI_NAMESPACE, key, b"1", ttl):
        raise ClientAssertionError("the client assertion was already used")


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def authenticate_assertion(
    runtime: Runtime,
    request: Request[Any, Any, Any],
    form: Mapping[str, str],
) -> ClientRecord:
    """Return the client that a request's client assertion proves.

    The client is a pre-registered one, or a Client ID Metadata Document
    client whose document has ``private_key_jwt`` and a key set.

    The assertion must be the request's only client authentication, and its
    ``aud`` the URL of the endpoint called (the token or the revocation
    endpoint of the gateway's issuer).

    Raises:
        ClientAssertionError: ``invalid_request`` when the request mixes
            methods or names another ``client_id``; ``invalid_client`` for any
            other failure.
    """
    if request.headers.get("authorization") is not None or "client_secret" in form:
        raise ClientAssertionError(
            "use one client authentication method, not a client assertion and a secret",
            error="invalid_request",
        )
    if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        raise ClientAssertionError(
            f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
        )
    assertion = form.get("client_assertion", "")
    client_id = assertion_issuer(assertion)
    if form.get("client_id") not in (None, client_id):
        raise ClientAssertionError(
            "client_id differs from the client assertion's iss",
            error="invalid_request",
        )
    try:
        record = await lookup_client(request, client_id)
    except ClientMetadataError as exc:
        raise ClientAssertionError(exc.description) from None
    if record is None or record.token_endpoint_auth_method != "private_key_jwt":
        raise ClientAssertionError(
            "no pre-registered client or client metadata document authenticates "
            "with private_key_jwt as this assertion's iss"
        )
    endpoint = f"{runtime.issuer}/oauth2/{request.url.path.rsplit('/', 1)[-1]}"
    await verify_client_assertion(
        runtime.store, record, assertion, token_endpoint=endpoint
    )
    return record
