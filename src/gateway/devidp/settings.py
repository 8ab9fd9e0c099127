"""Settings of the embedded dev IdP: users, clients and backend authorization servers.

All settings are frozen msgspec Structs. Each Struct validates itself in
``__post_init__``, so a bad value fails when the settings are built (or decoded
with ``msgspec.convert``), with a message that names the field and the value.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "DEMO_AGENTS",
    "DevBackendAS",
    "DevClient",
    "DevIdpSettings",
    "DevRasClient",
    "DevUser",
    "TokenEndpointAuthMethod",
    "demo_settings",
]

TokenEndpointAuthMethod = Literal[
    "client_secret_basic", "client_secret_post", "private_key_jwt"
]
"""Client authentication methods of RFC 7591 that the dev IdP implements."""

_BACKEND_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
# "v1" would make /oauth2/v1/... ambiguous between the org server and a backend.
_RESERVED_BACKEND_NAMES = frozenset({"v1"})


class DevUser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A user who can sign in at the dev IdP."""

    sub: str
    """Stable opaque subject identifier, such as ``00u_alice``."""
    email: str
    """Email address, also accepted as ``login_hint``."""
    name: str
    """Display name for the ``name`` claim."""
    preferred_username: str
    """Login name for the ``preferred_username`` claim."""

    def __post_init__(self) -> None:
        if not self.sub:
            msg = "DevUser.sub must not be empty"
            raise ValueError(msg)
        if "@" not in self.email:
            msg = f"DevUser.email must be an email address, got {self.email!r}"
            raise ValueError(msg)


class DevClient(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An OIDC client registered at the org authorization server."""

    client_id: str
    """Client identifier."""
    client_secret: str | None = None
    """Shared secret for the ``client_secret_*`` methods."""
    redirect_uris: list[str] = msgspec.field(default_factory=list)
    """Redirect URIs; the authorization request must name one exactly."""
    token_endpoint_auth_method: TokenEndpointAuthMethod = "client_secret_basic"
    """The one authentication method the token endpoint accepts from this client."""
    jwks: dict[str, Any] | None = None
    """Public JWK Set verifying ``private_key_jwt`` client assertions."""

    def __post_init__(self) -> None:
        _check_client_credentials(
            f"client {self.client_id!r}",
            self.client_id,
            self.client_secret,
            self.token_endpoint_auth_method,
            self.jwks,
        )
        for uri in self.redirect_uris:
            parts = urlsplit(uri)
            if not parts.scheme or not parts.netloc or parts.fragment:
                msg = (
                    f"client {self.client_id!r}: redirect URI {uri!r} must be an "
                    "absolute URL without a fragment"
                )
                raise ValueError(msg)


class DevRasClient(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """A client registered at one backend authorization server."""

    client_id: str
    """Client identifier at the backend authorization server."""
    client_secret: str | None = None
    """Shared secret for ``client_secret_basic`` or ``client_secret_post``."""
    token_endpoint_auth_method: TokenEndpointAuthMethod | None = None
    """The one method accepted; None accepts every method the credentials allow."""
    jwks: dict[str, Any] | None = None
    """Public JWK Set verifying ``private_key_jwt`` client assertions."""

    def __post_init__(self) -> None:
        _check_client_credentials(
            f"backend client {self.client_id!r}",
            self.client_id,
            self.client_secret,
            self.token_endpoint_auth_method,
            self.jwks,
        )


class DevBackendAS(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """A backend authorization server that redeems ID-JAGs for one MCP server."""

    name: str
    """Path segment of the server: its issuer is ``<issuer>/oauth2/<name>``."""
    resource: str
    """RFC 9728 resource identifier of the MCP server it protects."""
    scopes: list[str] = msgspec.field(default_factory=list)
    """Scopes this server can grant."""
    clients: list[DevRasClient] = msgspec.field(default_factory=list)
    """Clients that may redeem ID-JAGs here."""
    client_mapping: dict[str, str] = msgspec.field(default_factory=dict)
    """Org client_id requesting an ID-JAG -> client_id put in the ID-JAG."""

    def __post_init__(self) -> None:
        if not _BACKEND_NAME.match(self.name) or self.name in _RESERVED_BACKEND_NAMES:
            msg = (
                f"backend name {self.name!r} is invalid: use 1-63 lowercase letters, "
                "digits, '-' or '_', not 'v1'"
            )
            raise ValueError(msg)
        _check_url(f"backend {self.name!r}: resource", self.resource)
        for scope in self.scopes:
            if not _SCOPE_TOKEN.match(scope):
                msg = (
                    f"backend {self.name!r}: scope {scope!r} is not a valid scope token"
                )
                raise ValueError(msg)
        ids = [client.client_id for client in self.clients]
        _check_unique(f"backend {self.name!r}: client_id", ids)
        for org_client_id, ras_client_id in self.client_mapping.items():
            if ras_client_id not in ids:
                msg = (
                    f"backend {self.name!r}: client_mapping[{org_client_id!r}] names "
                    f"{ras_client_id!r}, which is not one of its clients {ids!r}"
                )
                raise ValueError(msg)


def _default_users() -> dict[str, DevUser]:
    return {
        "alice": DevUser(
            sub="00u_alice",
            email="alice@example.com",
            name="Alice Example",
            preferred_username="alice@example.com",
        ),
        "bob": DevUser(
            sub="00u_bob",
            email="bob@example.com",
            name="Bob Example",
            preferred_username="bob@example.com",
        ),
    }


class DevIdpSettings(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """Everything the dev IdP serves. Lifetimes are in seconds."""

    issuer: str
    """Issuer of the org authorization server: scheme and host, with no path."""
    users: dict[str, DevUser] = msgspec.field(default_factory=_default_users)
    """Users by login name; ``login_hint`` names a key or an email."""
    clients: list[DevClient] = msgspec.field(default_factory=list)
    """OIDC clients of the org authorization server."""
    backends: list[DevBackendAS] = msgspec.field(default_factory=list)
    """Backend authorization servers, one per ID-JAG backend."""
    auto_login: bool = True
    """Sign in the ``login_hint`` user (or ``default_user``) without a prompt."""
    default_user: str = "alice"
    """User signed in when the request has no ``login_hint``."""
    authorization_code_ttl: int = 60
    """Lifetime of an authorization code."""
    id_token_ttl: int = 3600
    """Lifetime of an ID token."""
    access_token_ttl: int = 3600
    """Lifetime of an org access token."""
    refresh_token_ttl: int = 86400
    """Lifetime of each refresh token, counted from its issue."""
    idjag_ttl: int = 300
    """Lifetime of an ID-JAG."""
    backend_token_ttl: int = 3600
    """Lifetime of an access token issued by a backend authorization server."""
    clock_skew: int = 30
    """Leeway applied to ``exp``, ``nbf`` and ``iat`` checks."""
    max_pending_grants: int = 10000
    """Bound on stored codes, refresh tokens and used ``jti`` values of each kind."""

    def __post_init__(self) -> None:
        _check_url("issuer", self.issuer)
        if urlsplit(self.issuer).path:
            # Like an Okta org: endpoints sit at /oauth2/... of the issuer's host.
            msg = f"issuer {self.issuer!r} must have no path, not even a trailing '/'"
            raise ValueError(msg)
        if self.default_user not in self.users:
            msg = (
                f"default_user {self.default_user!r} is not one of the users "
                f"{sorted(self.users)!r}"
            )
            raise ValueError(msg)
        _check_unique("users: sub", [user.sub for user in self.users.values()])
        client_ids = [client.client_id for client in self.clients]
        _check_unique("clients: client_id", client_ids)
        _check_unique("backends: name", [backend.name for backend in self.backends])
        for backend in self.backends:
            for org_client_id in backend.client_mapping:
                if org_client_id not in client_ids:
                    msg = (
                        f"backend {backend.name!r}: client_mapping names org client "
                        f"{org_client_id!r}, which is not one of the clients "
                        f"{client_ids!r}"
                    )
                    raise ValueError(msg)
        for field in (
            "authorization_code_ttl",
            "id_token_ttl",
            "access_token_ttl",
            "refresh_token_ttl",
            "idjag_ttl",
            "backend_token_ttl",
            "max_pending_grants",
        ):
            value = getattr(self, field)
            if value <= 0:
                msg = f"{field} must be positive, got {value!r}"
                raise ValueError(msg)
        if self.clock_skew < 0:
            msg = f"clock_skew must not be negative, got {self.clock_skew!r}"
            raise ValueError(msg)

    def backend_issuer(self, backend: DevBackendAS) -> str:
        """Return the issuer of a backend authorization server."""
        return f"{self.issuer}/oauth2/{backend.name}"


DEMO_AGENTS = ("cursor", "claude-code", "inspector")
"""The demo agents; each has an org client ``<agent>-agent`` of its own."""


def demo_settings(
    issuer: str = "http://127.0.0.1:9000",
    gateway_url: str = "http://127.0.0.1:8000",
    employees_resource: str = "http://127.0.0.1:8001/mcp",
) -> DevIdpSettings:
    """Return the demo settings: org clients and one ``employees`` backend.

    The gateway's client is ``agent-proxy`` (secret ``agent-proxy-dev-secret``).
    Each demo agent has its own org client ``<agent>-agent`` (secret
    ``<agent>-agent-dev-secret``), as an AI agent has its own app in an Okta
    org. At ``employees`` each org client maps to a client of its own:
    ``agent-proxy-at-employees`` (secret ``employees-dev-secret``) and
    ``<agent>-at-employees`` (secret ``<agent>-employees-dev-secret``), so an
    ID-JAG names the agent that requested it.

    Args:
        issuer: Issuer of the org authorization server.
        gateway_url: The gateway's public URL; its callback is the redirect URI
            of every org client.
        employees_resource: RFC 9728 resource of the employees MCP server.
    """
    callback = f"{gateway_url}/oauth2/callback"
    org_clients = [
        DevClient(
            client_id="agent-proxy",
            client_secret="agent-proxy-dev-secret",
            redirect_uris=[callback],
            token_endpoint_auth_method="client_secret_basic",
        )
    ]
    employees_clients = [
        DevRasClient(
            client_id="agent-proxy-at-employees",
            client_secret="employees-dev-secret",
        )
    ]
    mapping = {"agent-proxy": "agent-proxy-at-employees"}
    for agent in DEMO_AGENTS:
        org_clients.append(
            DevClient(
                client_id=f"{agent}-agent",
                client_secret=f"{agent}-agent-dev-secret",
                redirect_uris=[callback],
                token_endpoint_auth_method="client_secret_basic",
            )
        )
        employees_clients.append(
            DevRasClient(
                client_id=f"{agent}-at-employees",
                client_secret=f"{agent}-employees-dev-secret",
            )
        )
        mapping[f"{agent}-agent"] = f"{agent}-at-employees"
    return DevIdpSettings(
        issuer=issuer,
        clients=org_clients,
        backends=[
            DevBackendAS(
                name="employees",
                resource=employees_resource,
                scopes=["employees:read", "employees:write"],
                clients=employees_clients,
                client_mapping=mapping,
            )
        ],
    )


def _check_client_credentials(
    label: str,
    client_id: str,
    client_secret: str | None,
    method: TokenEndpointAuthMethod | None,
    jwks: dict[str, Any] | None,
) -> None:
    if not client_id:
        msg = f"{label}: client_id must not be empty"
        raise ValueError(msg)
    if client_secret is None and jwks is None:
        msg = f"{label}: set client_secret, jwks or both"
        raise ValueError(msg)
    if method in ("client_secret_basic", "client_secret_post") and not client_secret:
        msg = f"{label}: token_endpoint_auth_method {method!r} needs a client_secret"
        raise ValueError(msg)
    if method == "private_key_jwt" and not jwks:
        msg = f"{label}: token_endpoint_auth_method 'private_key_jwt' needs jwks"
        raise ValueError(msg)
    if jwks is not None and not isinstance(jwks.get("keys"), list):
        msg = f"{label}: jwks must be a JWK Set with a 'keys' array"
        raise ValueError(msg)


def _check_url(label: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"{label} {url!r} must be an absolute http or https URL"
        raise ValueError(msg)
    if parts.query or parts.fragment:
        msg = f"{label} {url!r} must not have a query or fragment"
        raise ValueError(msg)


def _check_unique(label: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            msg = f"{label} {value!r} appears more than once"
            raise ValueError(msg)
        seen.add(value)
