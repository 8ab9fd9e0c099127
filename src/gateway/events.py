"""The gateway's audit events: one tagged union, schema version 1.

Every event carries the common fields of :class:`GatewayEvent`; a field that
is not known when the event is published is null. Events never contain a
token, a secret or a client assertion.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal

import msgspec

from pipeline import Event, event_union

SCHEMA_VERSION: Final = 1

Outcome = Literal["success", "denied", "error"]


class UserRef(msgspec.Struct, frozen=True, kw_only=True):
    """The user an event is about: issuer and subject at the upstream IdP."""

    iss: str
    sub: str


class AgentRef(msgspec.Struct, frozen=True, kw_only=True):
    """The agent an event is about and how its identity was established."""

    id: str
    verified: bool
    trust: str


class GrantSelector(msgspec.Struct, frozen=True, kw_only=True):
    """Which grants an admin command matches: every field set must be equal.

    Attributes:
        user_iss: The user's upstream IdP issuer.
        user_sub: The user's subject at that IdP.
        agent_id: The agent the grant was issued to.
        client_id: The OAuth client the grant was issued to.
    """

    user_iss: str | None = None
    user_sub: str | None = None
    agent_id: str | None = None
    client_id: str | None = None


class GatewayEvent(Event, frozen=True, kw_only=True):
    """Fields common to every gateway event.

    Attributes:
        schema_version: The audit schema version, 1.
        user: The signed-in user, once authenticated.
        agent: The calling agent, once identified.
        backend: The backend name, when the request targets one.
        method: The MCP (JSON-RPC) method, when known.
        tool: The tool of a ``tools/call``, when known.
        protocol_version: The client's ``MCP-Protocol-Version``, when sent.
        outcome: ``success``, ``denied`` or ``error``.
        reason: A stable reason code, mainly for denials and errors.
        prev_hash: In a durable audit sink's stream, the SHA-256 (hex) of the
            previous record's canonical bytes (keys sorted, no whitespace,
            UTF-8), null for the first; null outside those streams.
    """

    __abstract_event__: ClassVar[bool] = True

    schema_version: Literal[1] = SCHEMA_VERSION
    user: UserRef | None = None
    agent: AgentRef | None = None
    backend: str | None = None
    method: str | None = None
    tool: str | None = None
    protocol_version: str | None = None
    outcome: Outcome = "success"
    reason: str | None = None
    prev_hash: str | None = None


# Request chain --------------------------------------------------------------


class RequestRejected(GatewayEvent, frozen=True, kw_only=True):
    """The HTTP layer rejected a request before the chain ran."""

    status: int
    detail: str


class RequestAuthenticated(GatewayEvent, frozen=True, kw_only=True):
    """A gateway access token was verified."""

    client_id: str
    token_id: str | None = None


class AuthenticationFailed(GatewayEvent, frozen=True, kw_only=True):
    """A request had no valid gateway access token."""

    detail: str


class AgentIdentified(GatewayEvent, frozen=True, kw_only=True):
    """The calling agent was identified."""

    client_id: str


class AgentRejected(GatewayEvent, frozen=True, kw_only=True):
    """The agent identity conflicted with the request (``X-MCP-Agent``)."""

    detail: str


class AccessGranted(GatewayEvent, frozen=True, kw_only=True):
    """Policy allowed the request."""

    rule: str


class AccessDenied(GatewayEvent, frozen=True, kw_only=True):
    """Policy denied the request; ``reason`` gives the cause."""

    detail: str


class ToolsFiltered(GatewayEvent, frozen=True, kw_only=True):
    """Tools the agent may not call were removed from a ``tools/list`` result."""

    removed: list[str]


class TokenExchanged(GatewayEvent, frozen=True, kw_only=True):
    """Backend credentials were obtained or taken from the cache.

    Attributes:
        auth_kind: The backend auth kind (``id-jag``, ``static-key``, ...).
        cache: ``hit`` or ``miss``; None for kinds that need no cache.
        audience: The backend authorization server, for ``id-jag``.
        expires_in: Seconds the backend token is still valid, when known.
    """

    auth_kind: str
    cache: str | None = None
    audience: str | None = None
    expires_in: int | None = None


class ExchangeFailed(GatewayEvent, frozen=True, kw_only=True):
    """Getting backend credentials failed."""

    auth_kind: str
    step: str
    oauth_error: str | None = None
    detail: str


class SessionCreated(GatewayEvent, frozen=True, kw_only=True):
    """A gateway session was created on ``initialize``.

    Its ``protocol_version`` is the version the client asked for.
    """

    session: str


class SessionResumed(GatewayEvent, frozen=True, kw_only=True):
    """A request continued an existing gateway session."""

    session: str


class SessionEnded(GatewayEvent, frozen=True, kw_only=True):
    """A session was ended by DELETE or expiry.

    A config reload that removes a session's backend ends the session too,
    with reason ``backend_removed``.
    """

    session: str


class SessionRejected(GatewayEvent, frozen=True, kw_only=True):
    """A session id was missing, unknown, ended or bound to someone else.

    Also published when a request reuses an id still in flight in its session.
    """

    status: int
    detail: str


class RateLimited(GatewayEvent, frozen=True, kw_only=True):
    """A request was over its user and agent's rate limit and got 429.

    Attributes:
        retry_after: The ``Retry-After`` sent, in whole seconds.
        per_minute: The sustained rate of the limit that applied.
        burst: The burst of the limit that applied.
    """

    retry_after: int
    per_minute: int
    burst: int


class ResultRedacted(GatewayEvent, frozen=True, kw_only=True):
    """Matches of configured patterns were removed from a result.

    Published once per response, when it is finished, if anything was
    removed. The removed values are never recorded.

    Attributes:
        counts: Matches replaced, per pattern name.
        oversized: Strings replaced whole because they were longer than the
            stage scans, or nested deeper than it walks.
    """

    counts: dict[str, int]
    oversized: int = 0


class BackendFailed(GatewayEvent, frozen=True, kw_only=True):
    """The backend could not be reached or returned an unusable response."""

    detail: str


class ResponseCompleted(GatewayEvent, frozen=True, kw_only=True):
    """A response was fully sent, or the stream ended.

    Attributes:
        status: The HTTP status sent to the client.
        duration_ms: Time from request arrival to the last byte.
        streamed: Whether the body was an event stream.
        bytes_sent: Body bytes sent.
        completed: False when the client left or the stream failed.
    """

    status: int
    duration_ms: float
    streamed: bool
    bytes_sent: int
    completed: bool = True


# OAuth front door -----------------------------------------------------------


class ClientRegistered(GatewayEvent, frozen=True, kw_only=True):
    """A client registered with dynamic client registration."""

    client_id: str
    client_name: str | None = None
    redirect_uris: list[str] = msgspec.field(default_factory=list)


class AuthorizationRequested(GatewayEvent, frozen=True, kw_only=True):
    """A client started an authorization request."""

    client_id: str
    resource: str | None = None


class AuthorizationRejected(GatewayEvent, frozen=True, kw_only=True):
    """An authorization request was refused (policy, bad input, IdP error)."""

    client_id: str | None = None
    resource: str | None = None
    detail: str


class ConsentGranted(GatewayEvent, frozen=True, kw_only=True):
    """The user approved a client on the consent page."""

    client_id: str


class ConsentRevoked(GatewayEvent, frozen=True, kw_only=True):
    """A user's remembered approval of a client was withdrawn.

    The next sign-in of that client shows the consent page again. The
    ``agent-proxy revoke`` command withdraws the consents it covers (reason
    ``admin_revoke``), next to the ``GrantRevoked`` of each grant it ends.
    """

    client_id: str


class UserSignedIn(GatewayEvent, frozen=True, kw_only=True):
    """The upstream IdP signed a user in and the gateway created a grant.

    Attributes:
        client_id: The gateway client the grant was issued to.
        grant_id: The grant.
        upstream_client_id: The client at the IdP the user signed in through:
            the gateway's own (``upstream.client_id``) or a verified agent's
            (``agents.<name>.upstream.client_id``).
    """

    client_id: str
    grant_id: str
    upstream_client_id: str | None = None


class TokenIssued(GatewayEvent, frozen=True, kw_only=True):
    """The gateway issued an access token."""

    client_id: str
    grant_type: str
    audience: str
    token_id: str


class TokenRequestFailed(GatewayEvent, frozen=True, kw_only=True):
    """A token request was rejected with an OAuth error.

    Attributes:
        oauth_error: The error code sent to the client.
        upstream_oauth_error: The upstream IdP's error code, when a refresh
            failed because the IdP rejected or failed the upstream re-check.
    """

    client_id: str | None = None
    grant_type: str | None = None
    oauth_error: str
    upstream_oauth_error: str | None = None


class RefreshTokenReused(GatewayEvent, frozen=True, kw_only=True):
    """A rotated-out refresh token was presented; its family was revoked."""

    client_id: str
    grant_id: str


class TokenRevoked(GatewayEvent, frozen=True, kw_only=True):
    """A client revoked a token (RFC 7009).

    Attributes:
        token_type: ``refresh_token`` (its whole grant was revoked) or
            ``access_token`` (that token alone, until it expires).
        grant_id: The grant the token belonged to.
        token_id: The access token's ``jti``; None for a refresh token.
    """

    client_id: str
    token_type: str
    grant_id: str
    token_id: str | None = None


class GrantRevoked(GatewayEvent, frozen=True, kw_only=True):
    """The gateway ended a grant: every token issued on it stopped working.

    ``reason`` is one of:

    - ``admin_revoke``: the ``agent-proxy revoke`` command;
    - ``upstream_session_ended``: the IdP rejected the upstream refresh token,
      at a re-check or at the refresh before an exchange;
    - ``upstream_subject_changed``: an upstream refresh returned an ID token
      whose ``sub`` or ``iss`` differs from the grant's;
    - ``id_token_expired``: the upstream ID token expired before an exchange
      and there was no upstream refresh token;
    - ``upstream_client_removed``: the upstream client the user signed in
      through is no longer configured;
    - ``id_token_rejected``: the IdP rejected the user's ID token at the
      ID-JAG token exchange.

    Attributes:
        client_id: The client the grant was issued to.
        grant_id: The grant.
        selector: The admin command's selector, for ``admin_revoke``.
        oauth_error: The IdP's error code, when an IdP response ended the
            grant.
    """

    client_id: str
    grant_id: str
    selector: GrantSelector | None = None
    oauth_error: str | None = None


# Signing keys ---------------------------------------------------------------


class SigningKeyRotated(GatewayEvent, frozen=True, kw_only=True):
    """A new key started signing the gateway's access tokens.

    ``reason`` is ``schedule`` (``signing.rotate_after`` passed),
    ``algorithm_changed`` (``signing.algorithm`` differed at start-up),
    ``manual`` (rotated by this process on request) or ``key_file`` (another
    process sharing the key file rotated it, such as ``agent-proxy keys
    rotate``). The previous key keeps verifying until its tokens expire.

    Attributes:
        kid: The new signing key's ``kid``.
        previous_kid: The ``kid`` of the key it replaced.
        algorithm: The new key's algorithm.
    """

    kid: str
    previous_kid: str
    algorithm: str


# Configuration --------------------------------------------------------------


ReloadTrigger = Literal["sighup", "file_change"]
"""The cause of a config reload: the ``SIGHUP`` signal or a change of the file."""


class ConfigReloaded(GatewayEvent, frozen=True, kw_only=True):
    """A reloaded config was validated and now serves new requests.

    Requests in flight at the switch finish with the previous config. The
    lists name backends, agents and YAML key paths, never values.

    Attributes:
        source: What started the reload.
        config_sha256: The SHA-256 (hex) of the config file now serving.
        previous_config_sha256: The SHA-256 (hex) of the file it replaced.
        backends_added: Backends new in this config.
        backends_removed: Backends gone; their sessions end.
        backends_changed: Backends whose settings changed; they get a new
            HTTP connection pool.
        chains_changed: Backends kept whose chain has other stages or stage
            settings.
        agents_changed: Agents added, removed or changed, and
            ``default_agent`` when its policy changed.
        changed: Every changed key path that now applies.
        restart_required: Changed key paths that apply only after a restart;
            until then the gateway keeps their previous values.
    """

    source: ReloadTrigger
    config_sha256: str
    previous_config_sha256: str | None = None
    backends_added: list[str] = msgspec.field(default_factory=list)
    backends_removed: list[str] = msgspec.field(default_factory=list)
    backends_changed: list[str] = msgspec.field(default_factory=list)
    chains_changed: list[str] = msgspec.field(default_factory=list)
    agents_changed: list[str] = msgspec.field(default_factory=list)
    changed: list[str] = msgspec.field(default_factory=list)
    restart_required: list[str] = msgspec.field(default_factory=list)


class ConfigRejected(GatewayEvent, frozen=True, kw_only=True):
    """A reloaded config was invalid, so the previous config keeps serving.

    Attributes:
        source: What started the reload.
        config_sha256: The SHA-256 (hex) of the rejected file; None when it
            could not be read.
        current_config_sha256: The SHA-256 (hex) of the config still serving.
        errors: Every problem found, each with its YAML path, as
            ``agent-proxy check`` prints them.
    """

    source: ReloadTrigger
    config_sha256: str | None = None
    current_config_sha256: str | None = None
    errors: list[str]


def audit_event_union() -> Any:
    """Return the tagged union of every concrete gateway event type."""
    return event_union(GatewayEvent)
