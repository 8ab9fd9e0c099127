"""The facts that built-in stages provide, as typed Structs.

Fact names are the strings stages list in ``requires`` and ``provides``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PRINCIPAL = "principal"
AGENT = "agent"
DECISION = "decision"
BACKEND_CREDENTIALS = "backend_credentials"
BACKEND_SESSION = "backend_session"

TrustLevel = Literal["verified", "self-asserted", "unknown"]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The signed-in user behind a request, from a verified gateway access token.

    Attributes:
        iss: The upstream IdP issuer that authenticated the user.
        sub: The user's subject at that IdP.
        client_id: The OAuth client (at the gateway) the token was issued to.
        grant_id: The server-side grant holding the user's upstream tokens.
        scopes: Scopes granted to the token.
        agent_claim: The agent recorded in the token when it was issued.
        token_id: The access token's ``jti`` (never the token itself).
        email: The user's email, when the IdP gave one.
        expires_at: The token's ``exp``, in seconds since the epoch.
    """

    iss: str
    sub: str
    client_id: str
    grant_id: str
    scopes: tuple[str, ...] = ()
    agent_claim: dict[str, Any] | None = None
    token_id: str | None = None
    email: str | None = None
    expires_at: int = 0


class AgentIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """The calling agent and how far the gateway trusts that identity.

    Attributes:
        id: The agent's name in config (``cursor``), or ``default`` when unmatched.
        verified: Whether the identity comes from an authenticated client.
        trust: ``verified``, ``self-asserted``, or ``unknown`` for the default policy.
        client_id: The OAuth client id the identity came from.
    """

    id: str
    verified: bool
    trust: TrustLevel
    client_id: str


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The authorization decision for one request.

    Attributes:
        allowed: Always True once the chain continues; denials end the chain.
        backend: The backend the decision applies to.
        tool: The tool of a ``tools/call``, else None.
        rule: Which rule allowed it, for audit.
    """

    allowed: bool
    backend: str
    tool: str | None = None
    rule: str = ""


class BackendCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """Headers that authenticate the gateway to the backend for this request.

    Attributes:
        headers: Header name to value; empty for ``auth: none``.
        kind: The backend auth kind that produced them.
        cache: ``hit``, ``miss`` or None when no cache applies.
    """

    headers: dict[str, str]
    kind: str
    cache: str | None = None


class BackendSession(msgspec.Struct, frozen=True, kw_only=True):
    """The backend side of the client's MCP session for this request.

    Attributes:
        gateway_session_id: The id the client sees, or None before one exists.
        backend_session_id: The backend's own id, or None when it issued none.
        protocol_version: The version negotiated with the backend.
    """

    gateway_session_id: str | None
    backend_session_id: str | None
    protocol_version: str | None = None
