"""The configuration Structs; each field documents its YAML key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[int, msgspec.Meta(ge=1)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]

DEFAULT_PIPELINE = [
    "audit",
    "authenticate",
    "identify_agent",
    "authorize",
    "exchange",
    "session",
    "forward",
]


ClientAuthMethod = Literal[
    "client_secret_basic", "client_secret_post", "private_key_jwt"
]
"""How the gateway authenticates at a token endpoint (RFC 7591 names)."""
AssertionAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"
]
"""Signature algorithms of ``private_key_jwt`` client assertions."""


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def _check_client_auth(section: str, method: str, config: Any) -> None:
    """Require ``private_key_file`` when ``private_key_jwt`` is chosen."""
    if method == "private_key_jwt" and not config.private_key_file:
        msg = (
            f"{section}.private_key_file is required when "
            "token_endpoint_auth_method is private_key_jwt"
        )
        raise ValueError(msg)


class ServerConfig(_Config, frozen=True):
    """The gateway's listening address, public URL and request limits."""

    public_url: str
    """External base URL (scheme, host, optional port, no trailing slash)."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Port = 8000
    """TCP port to listen on."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024
    """Largest request body accepted on an MCP endpoint; larger gets 413."""
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024
    """Largest total size of request headers; larger gets 431."""
    body_timeout: PositiveSeconds = 30.0
    """Seconds allowed for receiving a whole request body; slower gets 408."""
    header_timeout: PositiveSeconds = 10.0
    """Seconds a client may take to send a request line and headers; the
    connection of a slower client is closed."""
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    """Largest JSON-RPC message from a backend (a JSON body or one SSE event);
    larger fails the request it answers with ``backend_message_too_large``."""
    sse_keepalive: PositiveSeconds = 15.0
    """Seconds an event stream to a client may stay silent before the gateway
    sends an SSE comment, so that proxies keep the connection open."""
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    """Browser origins allowed besides loopback ones (``http://localhost:6274``)."""
    var_dir: str = "var"
    """Directory for runtime state: signing keys, journals, audit files."""
    admin_socket: str = "admin.sock"
    """Unix domain socket of the admin API that ``agent-proxy revoke`` uses,
    relative to ``var_dir``; created with mode 0600 by ``agent-proxy run`` and
    ``agent-proxy demo``. An empty string turns the admin API off."""


class UpstreamConfig(_Config, frozen=True):
    """The upstream OIDC IdP (Okta org or the dev IdP) the gateway signs users in at."""

    issuer: str
    """The IdP issuer; its ``/.well-known/openid-configuration`` is fetched."""
    client_id: str
    """The gateway's confidential OIDC client at the IdP."""
    client_secret: str = ""
    """The client secret, usually ``${ENV_VAR}``."""
    token_endpoint_auth_method: ClientAuthMethod = "client_secret_basic"
    """The client authentication method at the IdP token endpoint."""
    private_key_file: str = ""
    """For ``private_key_jwt``: a JSON file with the private JWK that signs
    client assertions (absolute, or relative to the working directory)."""
    private_key_id: str = ""
    """For ``private_key_jwt``: the ``kid`` sent, which names the public key
    registered at the IdP; the JWK's own ``kid`` when empty."""
    private_key_algorithm: AssertionAlgorithm = "RS256"
    """For ``private_key_jwt``: the signature algorithm of client assertions."""
    scopes: list[str] = msgspec.field(
        default_factory=lambda: ["openid", "profile", "email", "offline_access"]
    )
    """Scopes requested at sign-in; ``offline_access`` yields a refresh token."""
    leeway: Annotated[int, msgspec.Meta(ge=0, le=300)] = 30
    """Seconds of clock skew tolerated on the ID token's ``exp``, ``nbf`` and
    ``iat``, from 0 to 300."""
    recheck_after: Annotated[int, msgspec.Meta(ge=0)] = 300
    """Seconds after which a client's refresh at the gateway first confirms the
    user's session at the IdP with the upstream refresh token; 0 confirms it at
    every refresh."""

    def __post_init__(self) -> None:
        _check_client_auth("upstream", self.token_endpoint_auth_method, self)


class ClientCredentialsConfig(_Config, frozen=True):
    """A confidential client's id and credentials at one authorization server."""

    client_id: str
    """The client id at that server."""
    client_secret: str = ""
    """The client secret, usually ``${ENV_VAR}``."""
    token_endpoint_auth_method: ClientAuthMethod = "client_secret_basic"
    """The client authentication method at that server's token endpoint."""
    private_key_file: str = ""
    """For ``private_key_jwt``: a JSON file with the private JWK that signs
    client assertions (absolute, or relative to the working directory)."""
    private_key_id: str = ""
    """For ``private_key_jwt``: the ``kid`` sent; the JWK's own ``kid`` when empty."""
    private_key_algorithm: AssertionAlgorithm = "RS256"
    """For ``private_key_jwt``: the signature algorithm of client assertions."""

    def __post_init__(self) -> None:
        if self.token_endpoint_auth_method == "private_key_jwt" and not (
            self.private_key_file
        ):
            msg = (
                "private_key_file is required when token_endpoint_auth_method "
                "is private_key_jwt"
            )
            raise ValueError(msg)


MIN_ROTATE_AFTER = 3600
"""Shortest ``signing.rotate_after`` accepted, in seconds, besides 0."""
MAX_ROTATE_AFTER = 365 * 86400
"""Longest ``signing.rotate_after`` accepted, in seconds."""


class SigningConfig(_Config, frozen=True):
    """Keys and lifetimes of the tokens the gateway issues."""

    key_file: str = "keys/signing.jwk.json"
    """Private signing key (JWK), relative to ``server.var_dir``; created if absent."""
    algorithm: Literal["ES256", "RS256"] = "ES256"
    """Signature algorithm of the gateway's access tokens."""
    access_token_ttl: Seconds = 600
    """Access token lifetime in seconds."""
    refresh_token_ttl: Seconds = 8 * 3600
    """Refresh token lifetime in seconds."""
    rotate_after: Annotated[int, msgspec.Meta(ge=0, le=MAX_ROTATE_AFTER)] = 30 * 86400
    """Seconds a signing key signs before a new key replaces it: 0 disables
    scheduled rotation, otherwise from 3600 (one hour) to 31536000 (365 days)."""

    def __post_init__(self) -> None:
        if 0 < self.rotate_after < MIN_ROTATE_AFTER:
            msg = (
                f"rotate_after must be 0 (no scheduled rotation) or at least "
                f"{MIN_ROTATE_AFTER} seconds"
            )
            raise ValueError(msg)


class RateLimit(_Config, frozen=True):
    """A token bucket: a sustained rate and the burst allowed on top of it."""

    per_minute: PositiveInt
    """Requests allowed per minute, on average, from one key."""
    burst: PositiveInt
    """Requests one key may send at once before the rate applies."""


class RateLimitsConfig(_Config, frozen=True):
    """Per-address request limits of the OAuth endpoints (not discovery or JWKS)."""

    enabled: bool = True
    """Whether the OAuth endpoints are rate-limited at all."""
    register: RateLimit = RateLimit(per_minute=20, burst=10)
    """``POST /oauth2/register``, per client address."""
    token: RateLimit = RateLimit(per_minute=120, burst=30)
    """``POST /oauth2/token``, per client address and again per ``client_id``."""
    authorize: RateLimit = RateLimit(per_minute=60, burst=20)
    """The browser endpoints ``authorize``, ``consent`` and ``callback`` together."""
    max_tracked_keys: Annotated[int, msgspec.Meta(ge=100)] = 10_000
    """Buckets kept per endpoint group; the least recently used one is dropped."""
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    """Proxy addresses or CIDR networks whose ``X-Forwarded-For`` is believed."""


class ClientMetadataConfig(_Config, frozen=True):
    """Client ID Metadata Documents: a ``client_id`` that is an https URL."""

    enabled: bool = True
    """Whether a ``client_id`` that is an https URL is resolved by fetching it."""
    allow_loopback: bool = False
    """Development only: also fetch documents from loopback addresses, over http
    or https. Every other private, link-local or reserved address is always
    refused."""


PreRegisteredAuthMethod = Literal[
    "client_secret_basic", "client_secret_post", "private_key_jwt", "none"
]
"""Client authentication methods of pre-registered clients at the gateway."""


class OAuthClientConfig(_Config, frozen=True):
    """An MCP client registered in the config instead of by dynamic registration.

    The loader checks the values: redirect URIs follow the registration rules
    (https, or http on a loopback address), a secret is required exactly when
    the method uses one, and a public JWK Set file exactly for
    ``private_key_jwt``.
    """

    redirect_uris: list[str]
    """Redirect URIs the client may use: https, or http on a loopback address,
    where any port is accepted at authorization."""
    client_name: str | None = None
    """The client's name, shown on the consent page; agent rules may match it."""
    token_endpoint_auth_method: PreRegisteredAuthMethod = "client_secret_basic"
    """The client's authentication method at ``/oauth2/token``. ``none`` makes
    a public client, which is never a verified agent."""
    client_secret: str = ""
    """The client secret, usually ``${ENV_VAR}``, at least 32 characters;
    required for ``client_secret_basic`` and ``client_secret_post``, and not
    allowed otherwise."""
    jwks_file: str = ""
    """For ``private_key_jwt``: a JSON file with the client's public JWK Set
    (absolute, or relative to the working directory)."""
    grant_types: list[str] = msgspec.field(
        default_factory=lambda: ["authorization_code", "refresh_token"]
    )
    """Grants the client may use: ``authorization_code`` and optionally
    ``refresh_token``."""
    scope: str | None = None
    """Informational, as in dynamic registration: the scopes the client uses."""


class OAuthConfig(_Config, frozen=True):
    """Limits of the OAuth front door: request rates and registration lifetime."""

    client_ttl: Seconds = 30 * 24 * 3600
    """Seconds a dynamically registered client lives without being used."""
    rate_limits: RateLimitsConfig = msgspec.field(default_factory=RateLimitsConfig)
    """Request rate limits of the OAuth endpoints."""
    client_metadata: ClientMetadataConfig = msgspec.field(
        default_factory=ClientMetadataConfig
    )
    """Client ID Metadata Document resolution."""
    pre_approved_clients: list[str] = msgspec.field(default_factory=list)
    """Client ids (registered ids or metadata document URLs) whose users skip
    the consent page."""
    clients: dict[str, OAuthClientConfig] = msgspec.field(default_factory=dict)
    """Pre-registered clients by ``client_id``. They never expire, dynamic
    registration cannot replace them, and a confidential one that a
    ``match.client_ids`` rule lists is a verified agent. List an id in
    ``pre_approved_clients`` to skip the consent page."""


class ToolRules(_Config, frozen=True):
    """Allow and deny patterns (fnmatch globs) for one backend's tools."""

    allow: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Tools allowed; a tool must match one pattern."""
    deny: list[str] = msgspec.field(default_factory=list)
    """Tools denied even when allowed; deny wins."""


class AgentMatch(_Config, frozen=True):
    """Rules that recognise OAuth clients as this agent."""

    client_name: str | None = None
    """Exact DCR ``client_name``; a match gives a self-asserted identity."""
    client_ids: list[str] = msgspec.field(default_factory=list)
    """Exact client ids. A listed client is verified when it proves its
    identity: a confidential ``oauth.clients`` entry that authenticates, or a
    metadata document whose redirect URIs are https on its own host. Any
    other listed client is self-asserted."""


class AgentConfig(_Config, frozen=True):
    """Policy for one agent, such as ``cursor`` or ``claude-code``."""

    match: AgentMatch = msgspec.field(default_factory=AgentMatch)
    """The rules that match this agent's clients."""
    backends: list[str] = msgspec.field(default_factory=list)
    """Backends the agent may use; ``"*"`` allows all."""
    tools: dict[str, ToolRules] = msgspec.field(default_factory=dict)
    """Tool rules per backend name; a backend not listed allows every tool."""
    upstream: ClientCredentialsConfig | None = None
    """The agent's own OIDC client at the upstream IdP (``upstream.issuer``),
    such as its Okta app. When the agent is verified, users sign in upstream
    through it, and the ID-JAG names it as the requesting client. A
    self-asserted or unknown agent always uses ``upstream``."""


class DefaultAgentConfig(_Config, frozen=True):
    """Policy for clients that match no configured agent."""

    backends: list[str] = msgspec.field(default_factory=list)
    """Backends an unrecognised client may use; empty refuses them all."""
    tools: dict[str, ToolRules] = msgspec.field(default_factory=dict)
    """Tool rules per backend name."""


class StaticKeyAuth(_Config, frozen=True, tag="static-key", tag_field="kind"):
    """A fixed credential sent in one header."""

    value: str
    """The credential, usually ``${ENV_VAR}``."""
    header: str = "X-Api-Key"
    """The header that carries it."""
    prefix: str = ""
    """Text put before the value, such as ``"Bearer "``."""


class BasicAuth(_Config, frozen=True, tag="basic", tag_field="kind"):
    """HTTP Basic credentials."""

    username: str
    password: str


class NoAuth(_Config, frozen=True, tag="none", tag_field="kind"):
    """No backend credential."""


class IdJagAuth(_Config, frozen=True, tag="id-jag", tag_field="kind"):
    """Okta Cross App Access: an ID-JAG token exchange, then the JWT-bearer grant."""

    resource: str
    """The backend's own RFC 9728 resource identifier (not the gateway URL)."""
    client_id: str
    """The gateway's client id at the backend authorization server."""
    issuer: str = ""
    """The backend authorization server's issuer: the ID-JAG ``audience``.
    Required unless ``discovery`` is on, and then left empty."""
    token_endpoint: str = ""
    """The backend authorization server's token endpoint. Required unless
    ``discovery`` is on, and then left empty."""
    discovery: bool = False
    """Dynamic mode: find the authorization server through the backend's RFC 9728
    metadata (at the well-known URL derived from ``resource``) and its RFC 8414
    metadata, instead of ``issuer`` and ``token_endpoint``."""
    allowed_issuers: list[str] = msgspec.field(default_factory=list)
    """Dynamic mode: the only issuers the gateway uses, compared exactly.
    Required with ``discovery``."""
    discovery_ttl: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 3600
    """Dynamic mode: seconds a discovered authorization server is reused."""
    discovery_allow_loopback: bool = False
    """Dynamic mode, development only: also accept loopback hosts, over http or
    https."""
    client_secret: str = ""
    """Its secret, usually ``${ENV_VAR}``."""
    token_endpoint_auth_method: ClientAuthMethod = "client_secret_basic"
    """The client authentication method at the backend authorization server."""
    private_key_file: str = ""
    """For ``private_key_jwt``: a JSON file with the private JWK that signs
    client assertions (absolute, or relative to the working directory)."""
    private_key_id: str = ""
    """For ``private_key_jwt``: the ``kid`` sent; the JWK's own ``kid`` when empty."""
    private_key_algorithm: AssertionAlgorithm = "RS256"
    """For ``private_key_jwt``: the signature algorithm of client assertions."""
    scopes: list[str] = msgspec.field(default_factory=list)
    """Scopes requested for the backend token."""
    refresh_before: Annotated[int, msgspec.Meta(ge=0)] = 60
    """Seconds before expiry at which a cached backend token is replaced."""
    agent_clients: dict[str, ClientCredentialsConfig] = msgspec.field(
        default_factory=dict
    )
    """Per agent name: the client that redeems ID-JAGs here for users who
    signed in through that agent's own upstream client
    (``agents.<name>.upstream``). The IdP names that client in those
    ID-JAGs, and the authorization server accepts an ID-JAG only from the
    client it names. Other users' ID-JAGs are redeemed with ``client_id``."""

    def __post_init__(self) -> None:
        _check_client_auth("auth", self.token_endpoint_auth_method, self)
        if self.discovery:
            if self.issuer or self.token_endpoint:
                msg = (
                    "auth.issuer and auth.token_endpoint must be empty when "
                    "auth.discovery is on; list issuers in auth.allowed_issuers"
                )
                raise ValueError(msg)
            if not self.allowed_issuers:
                msg = "auth.allowed_issuers is required when auth.discovery is on"
                raise ValueError(msg)
        else:
            if not self.issuer or not self.token_endpoint:
                msg = (
                    "auth.issuer and auth.token_endpoint are required unless "
                    "auth.discovery is on"
                )
                raise ValueError(msg)
            if self.allowed_issuers:
                msg = "auth.allowed_issuers applies only when auth.discovery is on"
                raise ValueError(msg)


BackendAuth = StaticKeyAuth | BasicAuth | NoAuth | IdJagAuth


class BackendConfig(_Config, frozen=True):
    """One backend MCP server behind the gateway."""

    path: str
    """Path of its MCP endpoint at the gateway, such as ``/employees/mcp``."""
    url: str
    """The backend's own MCP endpoint URL."""
    auth: BackendAuth = msgspec.field(default_factory=NoAuth)
    """The credential the gateway sends to the backend."""
    anonymous: bool = False
    """Serve without user sign-in; the chain then needs no security stages."""
    pipeline: list[str] | None = None
    """A chain for this backend only; the top-level ``pipeline`` otherwise."""
    timeout: PositiveSeconds = 30.0
    """Seconds to wait for the backend's response headers."""
    max_connections: PositiveInt = 100
    """Pooled connections to this backend."""
    deadline: PositiveSeconds | None = None
    """Seconds a request may take in total, from its arrival at the gateway to
    the end of the backend's answer; past it the request is cancelled. None
    sets no limit."""
    protocol: Literal["auto", "handshake", "stateless"] = "auto"
    """The MCP era the backend speaks: ``handshake`` (``initialize`` and
    sessions, 2024-11-05 to 2025-11-25), ``stateless`` (2026-07-28), or
    ``auto`` to ask it with ``server/discover`` when a client of another era
    needs to know."""


SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
"""Trace samplers, named as ``OTEL_TRACES_SAMPLER`` names them."""


class TracingConfig(_Config, frozen=True):
    """Trace export and sampling; the standard ``OTEL_*`` variables override it."""

    enabled: bool = True
    """Whether spans are recorded and exported. False records none; requests
    still get trace ids, which audit events, logs and backends receive.
    ``OTEL_SDK_DISABLED=true`` turns tracing off whatever this setting is."""
    endpoint: str = ""
    """OTLP/HTTP (protobuf) endpoint: a base URL such as
    ``http://collector:4318``, to which ``/v1/traces`` is added, or a full URL
    ending in ``/v1/traces``. ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` override it. With neither this nor those
    variables set, nothing is exported and no span is recorded."""
    sampler: SamplerName = "parentbased_always_on"
    """The sampler that selects the recorded traces. ``OTEL_TRACES_SAMPLER``
    overrides it. The ``parentbased_*`` samplers follow the sampled flag of the
    caller's ``traceparent`` when there is one."""
    ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0
    """For the ``traceidratio`` samplers: the share of traces recorded, from
    0 to 1; ``OTEL_TRACES_SAMPLER_ARG`` overrides it."""

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            msg = (
                "tracing.endpoint is not an http or https URL; "
                "give the collector's OTLP/HTTP address, such as "
                "http://127.0.0.1:4318"
            )
            raise ValueError(msg)


class MetricsConfig(_Config, frozen=True):
    """Metrics: the Prometheus endpoint ``/metrics`` and OTLP export."""

    enabled: bool = True
    """Whether metrics are collected at all. False serves no ``/metrics`` and
    exports nothing."""
    prometheus: bool = True
    """Whether ``GET /metrics`` serves the Prometheus text format. The endpoint
    is not behind OAuth: restrict it at the network layer or set
    ``bearer_token``."""
    bearer_token: str = ""
    """When set, ``/metrics`` requires ``Authorization: Bearer`` with this
    value, usually ``${ENV_VAR}``; other requests get 401."""
    endpoint: str = ""
    """OTLP/HTTP (protobuf) endpoint for metrics: a base URL, to which
    ``/v1/metrics`` is added, or a full URL ending in ``/v1/metrics``. Empty
    uses the base of ``tracing.endpoint``. ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``
    and ``OTEL_EXPORTER_OTLP_ENDPOINT`` override it; with none of them set,
    metrics are only served on ``/metrics``."""
    export_interval: PositiveSeconds = 60.0
    """Seconds between two OTLP exports; ``OTEL_METRIC_EXPORT_INTERVAL``
    (milliseconds) overrides it."""

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            msg = (
                "metrics.endpoint is not an http or https URL; "
                "give the collector's OTLP/HTTP address, such as "
                "http://127.0.0.1:4318"
            )
            raise ValueError(msg)


class HealthConfig(_Config, frozen=True):
    """The health endpoints ``/healthz`` (liveness) and ``/readyz`` (readiness)."""

    enabled: bool = True
    """Whether the gateway serves ``/healthz`` and ``/readyz``."""
    timeout: PositiveSeconds = 2.0
    """Seconds one readiness check may take before it fails as ``timeout``."""
    cache_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    """Seconds a readiness report is reused, so that frequent probes do not
    each reach the IdP and every backend."""
    check_backends: bool = True
    """Whether readiness requires every backend to respond to an HTTP request."""


class TelemetryConfig(_Config, frozen=True):
    """OpenTelemetry settings: service name, traces, and user identifiers in spans."""

    service_name: str = "agent-proxy"
    """The ``service.name`` resource attribute; ``OTEL_SERVICE_NAME`` and a
    ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` override it."""
    user_identifiers: Literal["hashed", "plain", "omit"] = "hashed"
    """The form of the signed-in user in spans: ``hashed`` (a SHA-256 of issuer and
    subject, ``agent_proxy.user.hash``), ``plain`` (``agent_proxy.user.iss``
    and ``agent_proxy.user.sub``) or ``omit``. Audit events always carry the
    plain issuer and subject."""
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    """Trace export and sampling."""
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    """Metrics on ``/metrics`` and their OTLP export."""
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    """The ``/healthz`` and ``/readyz`` endpoints."""


class GatewayConfig(_Config, frozen=True):
    """The whole gateway configuration file."""

    server: ServerConfig
    upstream: UpstreamConfig
    backends: dict[str, BackendConfig]
    signing: SigningConfig = msgspec.field(default_factory=SigningConfig)
    oauth: OAuthConfig = msgspec.field(default_factory=OAuthConfig)
    agents: dict[str, AgentConfig] = msgspec.field(default_factory=dict)
    default_agent: DefaultAgentConfig = msgspec.field(
        default_factory=DefaultAgentConfig
    )
    pipeline: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PIPELINE))
    stages: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """Settings per stage reference, validated by each stage's own Struct."""
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    """OpenTelemetry traces and how spans name users."""
