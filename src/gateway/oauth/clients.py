"""OAuth clients of the gateway: records in the state store and RFC 7591 validation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import structlog

from gateway.oauth.redirects import redirect_uri_problem
from gateway.store import Store, TypedStore

if TYPE_CHECKING:
    from gateway.config.model import OAuthClientConfig

log = structlog.get_logger("gateway.oauth")

ClientAuthMethod = Literal[
    "none", "client_secret_post", "client_secret_basic", "private_key_jwt"
]

AUTH_METHODS: tuple[ClientAuthMethod, ...] = (
    "none",
    "client_secret_post",
    "client_secret_basic",
)
GRANT_TYPES = ("authorization_code", "refresh_token")
RESPONSE_TYPES = ("code",)

_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
"""Unicode categories not allowed in ``client_name`` and ``scope``.

The consent page shows ``client_name``. Controls, format characters (such
as U+202E RIGHT-TO-LEFT OVERRIDE and U+200B ZERO WIDTH SPACE), surrogates,
private-use characters and line separators can hide or reorder text, so one
client could show the name of another.
"""

MAX_REDIRECT_URIS = 20
MAX_CLIENT_NAME_LENGTH = 200
MAX_SCOPE_LENGTH = 1000
DEFAULT_CLIENT_TTL = 30 * 24 * 3600
"""Seconds a dynamically registered client lives unused (``oauth.client_ttl``)."""


class ClientRecord(msgspec.Struct, kw_only=True):
    """One client registered at the gateway.

    Attributes:
        client_id: Random id issued at registration.
        client_name: The name the client gave itself; agent rules may match it.
        redirect_uris: Registered redirect URIs.
        token_endpoint_auth_method: ``none`` for public clients, else how the
            client authenticates: with its secret, or, for a pre-registered
            client only, with a ``private_key_jwt`` assertion.
        grant_types: Grants the client may use.
        created_at: Registration time, epoch seconds.
        pre_approved: Whether users skip the consent page for this client;
            only pre-registered clients are, never dynamically registered ones.
        secret_hash: SHA-256 of the client secret (hex) for confidential
            clients. The secret itself is never stored.
        scope: The ``scope`` the client registered, if any.
        ttl: Seconds the client lives without being looked up, for a
            dynamically registered client; None for a pre-registered client,
            which never expires.
        metadata_document: Whether the record comes from a Client ID Metadata
            Document, whose URL is the ``client_id``.
        document_redirects_verified: For a metadata document, whether every
            redirect URI is https on the document's own host, which makes the
            client's identity verified.
        pre_registered: Whether the client comes from ``oauth.clients`` in
            the config rather than from dynamic registration.
        jwks: For ``private_key_jwt``, the public JWK Set that verifies the
            client's assertions.
    """

    client_id: str
    client_name: str | None = None
    redirect_uris: list[str]
    token_endpoint_auth_method: ClientAuthMethod = "none"
    grant_types: list[str] = msgspec.field(default_factory=lambda: list(GRANT_TYPES))
    created_at: int
    pre_approved: bool = False
    secret_hash: str | None = None
    scope: str | None = None
    ttl: int | None = None
    metadata_document: bool = False
    document_redirects_verified: bool = False
    pre_registered: bool = False
    jwks: dict[str, Any] | None = None

    @property
    def identity_proven(self) -> bool:
        """Whether the client proves who it is.

        A confidential pre-registered client proves it by authenticating at
        the token endpoint, and a metadata document client by redirect URIs
        on the host that serves its document. A dynamically registered client
        proves nothing: anyone may register any name.
        """
        if self.metadata_document:
            return self.document_redirects_verified
        return self.pre_registered and not self.is_public

    @property
    def is_public(self) -> bool:
        """Whether the client has no secret."""
        return self.token_endpoint_auth_method == "none"

    def check_secret(self, secret: str) -> bool:
        """Return whether ``secret`` is this client's secret (constant time)."""
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)


class RegistrationError(Exception):
    """Client metadata that cannot be registered (RFC 7591 section 3.2.2).

    Attributes:
        error: ``invalid_redirect_uri`` or ``invalid_client_metadata``.
    """

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class ClientRegistry:
    """Registered clients in the state store.

    A dynamically registered client (namespace ``client``) expires after its
    ``ttl`` unless it is used: every lookup, at each authorization request
    and each token request, writes it again with a fresh ``ttl``. Because
    every lookup rewrites the record, a client in use is also the last the
    store's per-namespace bound evicts, since the store evicts the least
    recently written entries first.

    Pre-registered clients live in a namespace of their own
    (``client_preregistered``), which only :meth:`load_pre_registered`
    writes. So they never expire, a flood of registrations cannot evict them,
    and a lookup finds them before any registered client of the same id.
    """

    NAMESPACE = "client"
    PRE_REGISTERED_NAMESPACE = "client_preregistered"
    _INDEX_NAMESPACE = "client_preregistered_index"
    _INDEX_KEY = "ids"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._clients = TypedStore(store, self.NAMESPACE, ClientRecord)
        self._configured = TypedStore(
            store, self.PRE_REGISTERED_NAMESPACE, ClientRecord
        )

    async def get(self, client_id: str) -> ClientRecord | None:
        """Return a client and restart its ``ttl``, or None when unknown or expired."""
        if not client_id or len(client_id) > 200:
            return None
        record = await self._configured.get(client_id)
        if record is not None:
            return record
        record = await self._clients.get(client_id)
        if record is not None and record.ttl is not None:
            await self.save(record)
        return record

    async def save(self, record: ClientRecord) -> None:
        """Store a client, replacing one with the same id.

        The record expires after ``record.ttl`` seconds, or never when it is
        None. A pre-registered record goes to the pre-registered namespace.
        """
        clients = self._configured if record.pre_registered else self._clients
        await clients.set(record.client_id, record, ttl=record.ttl)

    async def load_pre_registered(
        self,
        clients: Mapping[str, OAuthClientConfig],
        *,
        jwks: Mapping[str, dict[str, Any]] | None = None,
    ) -> list[ClientRecord]:
        """Store the ``oauth.clients`` of the config, replacing earlier ones.

        Clients that an earlier start stored but the config no longer lists
        are deleted, so removing a client from the config ends its access
        even with a persistent store.

        Args:
            clients: The configured clients by ``client_id``.
            jwks: The public JWK Set of each ``private_key_jwt`` client, by
                ``client_id``.

        Returns:
            The stored records.
        """
        jwks = jwks or {}
        now = int(time.time())
        records = []
        for client_id, client in clients.items():
            record = ClientRecord(
                client_id=client_id,
                client_name=client.client_name,
                redirect_uris=list(client.redirect_uris),
                token_endpoint_auth_method=client.token_endpoint_auth_method,
                grant_types=sorted(set(client.grant_types), key=GRANT_TYPES.index),
                created_at=now,
                secret_hash=(
                    hash_secret(client.client_secret) if client.client_secret else None
                ),
                scope=client.scope,
                ttl=None,
                pre_registered=True,
                jwks=jwks.get(client_id),
            )
            await self.save(record)
            records.append(record)
        previous = await self._store.get(self._INDEX_NAMESPACE, self._INDEX_KEY)
        if previous is not None:
            for client_id in msgspec.json.decode(previous, type=list[str]):
                if client_id not in clients:
                    await self._configured.delete(client_id)
                    log.info("oauth.pre_registered_client_removed", client_id=client_id)
        await self._store.set(
            self._INDEX_NAMESPACE, self._INDEX_KEY, msgspec.json.encode(list(clients))
        )
        return records

    async def register(
        self, metadata: Any, *, ttl: int | None = DEFAULT_CLIENT_TTL
    ) -> tuple[ClientRecord, str | None]:
        """Validate RFC 7591 client metadata and register a new client.

        Args:
            metadata: The decoded JSON body of the registration request.
            ttl: Seconds the client lives unused (``oauth.client_ttl``);
                None registers a client that never expires.

        Returns:
            The record and, for a confidential client, its new secret (shown
            once to the client, stored only as a hash).

        Raises:
            RegistrationError: The metadata is invalid.
        """
        record = validate_metadata(metadata)
        # A random 192-bit id does not collide in practice, but a pre-registered
        # client must never be shadowed, so a taken id is drawn again.
        while await self.get(record.client_id) is not None:
            record.client_id = secrets.token_urlsafe(24)
        secret: str | None = None
        if not record.is_public:
            secret = secrets.token_urlsafe(32)
            record.secret_hash = hash_secret(secret)
        record.ttl = ttl
        await self.save(record)
        return record, secret


def hash_secret(secret: str) -> str:
    """Return the SHA-256 hex digest under which a secret or token is stored.

    A fast hash suffices because every value hashed here is a random string of
    at least 256 bits, never a password a person chose.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_metadata(metadata: Any) -> ClientRecord:
    """Build a new client record from registration metadata.

    Unknown metadata fields are ignored, as RFC 7591 section 2 requires.

    Raises:
        RegistrationError: A field is missing, of the wrong type or not supported.
    """
    if not isinstance(metadata, dict):
        raise RegistrationError(
            "invalid_client_metadata", "the request body must be a JSON object"
        )
    redirect_uris = metadata.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise RegistrationError(
            "invalid_redirect_uri", "redirect_uris must be a non-empty array of URLs"
        )
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise RegistrationError(
            "invalid_redirect_uri",
            f"at most {MAX_REDIRECT_URIS} redirect_uris may be registered",
        )
    for uri in redirect_uris:
        if not isinstance(uri, str):
            raise RegistrationError(
                "invalid_redirect_uri", "every entry of redirect_uris must be a string"
            )
        problem = redirect_uri_problem(uri)
        if problem is not None:
            raise RegistrationError("invalid_redirect_uri", problem)

    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise RegistrationError(
            "invalid_client_metadata",
            f"token_endpoint_auth_method {method!r} is not supported; "
            f"use one of {list(AUTH_METHODS)}",
        )
    # RFC 7591 defaults grant_types to authorization_code alone; MCP clients
    # that leave it out still expect refresh tokens, so both are the default.
    grant_types = _string_list(metadata, "grant_types", list(GRANT_TYPES))
    unsupported = [grant for grant in grant_types if grant not in GRANT_TYPES]
    if unsupported or "authorization_code" not in grant_types:
        raise RegistrationError(
            "invalid_client_metadata",
            f"grant_types {grant_types!r} must include 'authorization_code' and "
            f"contain only {list(GRANT_TYPES)}",
        )
    response_types = _string_list(metadata, "response_types", ["code"])
    if response_types != ["code"]:
        raise RegistrationError(
            "invalid_client_metadata",
            f"response_types {response_types!r} is not supported; use ['code']",
        )
    client_name = _optional_text(metadata, "client_name", MAX_CLIENT_NAME_LENGTH)
    scope = _optional_text(metadata, "scope", MAX_SCOPE_LENGTH)
    return ClientRecord(
        client_id=secrets.token_urlsafe(24),
        client_name=client_name,
        redirect_uris=list(redirect_uris),
        token_endpoint_auth_method=method,
        grant_types=sorted(set(grant_types), key=GRANT_TYPES.index),
        created_at=int(time.time()),
        scope=scope,
    )


def registration_response(record: ClientRecord, secret: str | None) -> dict[str, Any]:
    """Return the RFC 7591 section 3.2.1 response body for a new client."""
    body: dict[str, Any] = {
        "client_id": record.client_id,
        "client_id_issued_at": record.created_at,
        "redirect_uris": record.redirect_uris,
        "token_endpoint_auth_method": record.token_endpoint_auth_method,
        "grant_types": record.grant_types,
        "response_types": list(RESPONSE_TYPES),
    }
    if record.client_name is not None:
        body["client_name"] = record.client_name
    if record.scope is not None:
        body["scope"] = record.scope
    if secret is not None:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = 0
    return body


def _string_list(metadata: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = metadata.get(name, default)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RegistrationError(
            "invalid_client_metadata", f"{name} must be an array of strings"
        )
    return value


def _optional_text(metadata: dict[str, Any], name: str, max_length: int) -> str | None:
    value = metadata.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RegistrationError("invalid_client_metadata", f"{name} must be a string")
    if len(value) > max_length or any(
        unicodedata.category(char) in _HIDDEN_CATEGORIES for char in value
    ):
        raise RegistrationError(
            "invalid_client_metadata",
            f"{name} must be at most {max_length} characters, without control, "
            "format (such as bidirectional overrides and zero-width characters), "
            "private-use or line-separator characters",
        )
    return value
