"""Backend credentials for every ``auth`` kind, with the ID-JAG token cache."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog

from gateway.config import (
    BackendAuth,
    BasicAuth,
    GatewayConfig,
    IdJagAuth,
    NoAuth,
    StaticKeyAuth,
)
from gateway.errors import ExchangeError, UpstreamError
from gateway.exchange._requests import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    ServerUnavailableError,
)
from gateway.exchange.cache import CacheKey, ForgetLog, TokenCache
from gateway.exchange.discovery import AuthorizationServerDiscovery
from gateway.exchange.grant_clients import (
    GrantClients,
    UpstreamClientSet,
    backend_client,
    upstream_client_ids,
)
from gateway.exchange.idjag import IdJagExchanger, IssuedToken, UpstreamTokenClient
from gateway.exchange.tracing import (
    cache_result,
    exchange_span,
    record_cache_result,
)
from gateway.facts import AgentIdentity, BackendCredentials, Principal
from gateway.oauth.grants import GrantStore

__all__ = ["AUTHORIZATION", "CredentialService", "ObtainedCredentials"]

log = structlog.get_logger("gateway.exchange")

AUTHORIZATION = "authorization"
"""Header names in :class:`BackendCredentials` are lower-case."""

_MAX_ATTEMPTS = 3
"""Exchanges one request joins or runs before another grant's failure is final."""


@dataclass(frozen=True, slots=True)
class ObtainedCredentials:
    """Backend credentials, with the audience and lifetime that audit reports.

    Attributes:
        credentials: The headers to send to the backend.
        audience: The backend authorization server, for ``id-jag``.
        expires_in: Seconds the backend token stays valid, for ``id-jag``.
    """

    credentials: BackendCredentials
    audience: str | None = None
    expires_in: int | None = None


class CredentialService:
    """Produces the credentials the gateway presents to each backend.

    ``static-key``, ``basic`` and ``none`` come from config. ``id-jag`` takes
    the user's current upstream ID token from the grant, exchanges it for a
    backend token (see :mod:`gateway.exchange.idjag`) and caches that token
    per user, agent, backend, audience, scope and upstream client. The
    exchange authenticates as the upstream client the grant records, which
    the IdP requires because the ID token was issued to it.

    Args:
        config: The gateway config; replace :attr:`config` on reload.
        grants: Where the users' upstream ID tokens are kept.
        upstream: The gateway's client at the upstream IdP.
        upstream_clients: Every upstream client a grant may name (the
            agents' own clients); with None, only ``upstream`` is known.
        http: A pooled client for IdP and authorization server calls; one is
            created (and closed by :meth:`aclose`) when None.
        timeout: Seconds for each IdP or authorization server call, when the
            service creates its own client.
        cache_size: Bound on cached backend tokens.
        clock: Monotonic clock of the token cache, in seconds.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        grants: GrantStore,
        upstream: UpstreamTokenClient,
        upstream_clients: UpstreamClientSet | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._grants = grants
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
        )
        self._exchanger = IdJagExchanger(upstream, self._http)
        self._grant_clients = GrantClients(
            grants, upstream_clients, max_entries=cache_size
        )
        self.discovery = AuthorizationServerDiscovery(
            self._http, timeout=timeout, clock=clock
        )
        self._clock = clock
        self.cache = TokenCache(max_entries=cache_size, clock=clock)
        self._forgotten = ForgetLog(max_entries=cache_size)
        self._static: dict[str, tuple[BackendAuth, BackendCredentials]] = {}

    async def credentials_for(
        self, *, backend: str, principal: Principal, agent: AgentIdentity
    ) -> BackendCredentials:
        """Return the credentials for one request to ``backend``.

        Raises:
            ExchangeError: The exchange was refused; ``reason`` is
                ``reauthentication_required`` when only a new sign-in helps,
                ``issuer_not_allowed`` or ``backend_as_discovery_failed`` when
                dynamic discovery finds no usable authorization server.
            UpstreamError: The IdP or the backend authorization server (or,
                in dynamic mode, a metadata endpoint) is unavailable.
                ``retry_after`` is the number of seconds to wait before a retry.
            LookupError: ``backend`` is not in the config.
        """
        obtained = await self.obtain(backend=backend, principal=principal, agent=agent)
        return obtained.credentials

    async def obtain(
        self, *, backend: str, principal: Principal, agent: AgentIdentity
    ) -> ObtainedCredentials:
        """Like :meth:`credentials_for`, with the audience and lifetime for audit."""
        auth = self._auth(backend)
        if not isinstance(auth, IdJagAuth):
            return ObtainedCredentials(self._static_credentials(backend, auth))
        # Dynamic mode: the discovered issuer and token endpoint fill in auth.
        auth = await self.discovery.resolve(auth)
        upstream_client_id = await self._grant_clients.client_id_of(principal.grant_id)

        key = _cache_key(backend, auth, principal, agent, upstream_client_id)
        identity = (principal.iss, principal.sub, agent.id)
        fetched_here = False
        started = self._forgotten.now()

        async def fetch() -> IssuedToken:
            nonlocal fetched_here, started
            fetched_here = True
            started = self._forgotten.now()
            upstream = await self._grant_clients.upstream_for(
                principal.grant_id, upstream_client_id
            )
            id_token = await self._current_id_token(principal.grant_id)
            return await self._exchanger.exchange(
                backend=backend,
                auth=auth,
                id_token=id_token,
                upstream=upstream,
                backend_client=backend_client(self.config, auth, upstream_client_id),
            )

        async def traced_fetch() -> IssuedToken:
            with exchange_span(
                backend=backend, audience=auth.issuer, agent_id=agent.id
            ):
                return await fetch()

        def keep() -> bool:
            # forget() ran while this exchange was in flight: the grant it
            # used may be revoked, so its token must not serve later requests.
            kept = self._forgotten.unchanged_since(identity, started)
            if not kept:
                log.info(
                    "exchange.token_not_cached",
                    backend=backend,
                    agent_id=agent.id,
                    user_sub=principal.sub,
                    reason="forgotten_during_exchange",
                )
            return kept

        cached_before = self.cache.peek(key) is not None
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                token, hit = await self.cache.get(
                    key, traced_fetch, refresh_before=auth.refresh_before, keep=keep
                )
                break
            except ExchangeError as exc:
                # The same user may be signed in through several grants (one
                # per client). A waiter that shared another grant's exchange
                # must not take that grant's "sign in again" as its own, so it
                # runs an exchange with its own grant.
                own = fetched_here or exc.reason != "reauthentication_required"
                if own or attempt == _MAX_ATTEMPTS:
                    raise
        record_cache_result(
            cache_result(fetched_here=fetched_here, cached_before=cached_before)
        )
        if not hit:
            log.info(
                "exchange.token_obtained",
                backend=backend,
                agent_id=agent.id,
                user_sub=principal.sub,
                audience=auth.issuer,
                upstream_client_id=upstream_client_id,
                expires_in=int(token.expires_at - self._clock()),
            )
        credentials = BackendCredentials(
            headers={AUTHORIZATION: f"Bearer {token.access_token}"},
            kind="id-jag",
            cache="hit" if hit else "miss",
        )
        return ObtainedCredentials(
            credentials,
            audience=auth.issuer,
            expires_in=max(0, int(token.expires_at - self._clock())),
        )

    def invalidate(
        self,
        *,
        backend: str,
        principal: Principal,
        agent: AgentIdentity,
        rejected: BackendCredentials | None = None,
    ) -> bool:
        """Drop the cached backend token after the backend returned 401.

        Args:
            backend: The backend name.
            principal: The user.
            agent: The agent.
            rejected: The credentials the backend rejected. When given, a newer
                token that another request already obtained is kept.

        Returns:
            Whether a cached token was dropped.
        """
        auth = self._auth(backend)
        if not isinstance(auth, IdJagAuth):
            return False
        resolved = self.discovery.cached(auth)
        if resolved is None:
            return False
        auth = resolved
        token = None
        if rejected is not None:
            token = rejected.headers.get(AUTHORIZATION, "").removeprefix("Bearer ")
        # obtain() just looked up this grant's upstream client.
        upstream_client_id = self._grant_clients.remembered(principal.grant_id)
        key = _cache_key(backend, auth, principal, agent, upstream_client_id)
        dropped = self.cache.invalidate(key, access_token=token or None)
        if dropped:
            log.info(
                "exchange.token_invalidated",
                backend=backend,
                agent_id=agent.id,
                user_sub=principal.sub,
            )
        return dropped

    def forget(self, *, user_iss: str, user_sub: str, agent_id: str) -> int:
        """Drop the cached backend tokens of one user and agent, on every backend.

        Called when grants of that user and agent are revoked. The cache is
        keyed by user and agent rather than by grant, so other grants of the
        same user and agent exchange again on their next request. An
        exchange for them that is in flight now still returns its token to
        the request that started it, but the token is not cached.

        Returns:
            How many cached tokens were dropped.
        """
        self._forgotten.forget((user_iss, user_sub, agent_id))
        dropped = 0
        for backend, config in self.config.backends.items():
            if not isinstance(config.auth, IdJagAuth):
                continue
            auth = self.discovery.cached(config.auth)
            if auth is None:
                continue
            # The key uses the user's and the agent's ids and the upstream
            # client, so every upstream client the config has is tried.
            principal = Principal(iss=user_iss, sub=user_sub, client_id="", grant_id="")
            agent = AgentIdentity(
                id=agent_id, verified=False, trust="unknown", client_id=""
            )
            for upstream_client_id in upstream_client_ids(self.config):
                key = _cache_key(backend, auth, principal, agent, upstream_client_id)
                if self.cache.invalidate(key):
                    dropped += 1
        if dropped:
            log.info(
                "exchange.tokens_forgotten",
                agent_id=agent_id,
                user_sub=user_sub,
                dropped=dropped,
            )
        return dropped

    async def aclose(self) -> None:
        """Close the HTTP client if the service created it, and drop the cache."""
        self.cache.clear()
        self.discovery.clear()
        if self._owns_http:
            await self._http.aclose()

    async def _current_id_token(self, grant_id: str) -> str:
        """Return the grant's ID token, tagging an IdP outage ``upstream_refresh``."""
        try:
            return await self._grants.current_id_token(grant_id)
        except ExchangeError:
            raise
        except UpstreamError as exc:
            if exc.reason != "idp_unavailable":
                raise
            raise ServerUnavailableError(
                str(exc),
                reason=exc.reason,
                step="upstream_refresh",
                retry_after=min(
                    exc.retry_after or DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER
                ),
                oauth_error=getattr(exc, "oauth_error", None),
            ) from exc

    def _auth(self, backend: str) -> BackendAuth:
        config = self.config.backends.get(backend)
        if config is None:
            known = ", ".join(sorted(self.config.backends)) or "none"
            msg = f"backend {backend!r} is not configured (configured: {known})"
            raise LookupError(msg)
        return config.auth

    def _static_credentials(
        self, backend: str, auth: BackendAuth
    ) -> BackendCredentials:
        cached = self._static.get(backend)
        if cached is not None and cached[0] is auth:
            return cached[1]
        credentials = _static(auth)
        self._static[backend] = (auth, credentials)
        return credentials


def _cache_key(
    backend: str,
    auth: IdJagAuth,
    principal: Principal,
    agent: AgentIdentity,
    upstream_client_id: str | None,
) -> CacheKey:
    return CacheKey(
        user_iss=principal.iss,
        user_sub=principal.sub,
        agent_id=agent.id,
        backend=backend,
        audience=auth.issuer,
        scope=" ".join(sorted(auth.scopes)),
        upstream_client=upstream_client_id or "",
    )


def _static(auth: BackendAuth) -> BackendCredentials:
    if isinstance(auth, StaticKeyAuth):
        headers = {auth.header.lower(): f"{auth.prefix}{auth.value}"}
        return BackendCredentials(headers=headers, kind="static-key")
    if isinstance(auth, BasicAuth):
        # RFC 7617: the user-pass is encoded as UTF-8 before base64.
        pair = f"{auth.username}:{auth.password}".encode()
        value = "Basic " + base64.b64encode(pair).decode("ascii")
        return BackendCredentials(headers={AUTHORIZATION: value}, kind="basic")
    if isinstance(auth, NoAuth):
        return BackendCredentials(headers={}, kind="none")
    msg = f"backend auth kind {type(auth).__name__} has no static credentials"
    raise TypeError(msg)
