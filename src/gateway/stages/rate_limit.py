"""The ``rate_limit`` stage: a token bucket per user and agent."""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any, ClassVar

import msgspec
import structlog

from gateway.agents import DEFAULT_AGENT
from gateway.config.model import PositiveInt
from gateway.context import RequestContext
from gateway.events import RateLimited
from gateway.facts import AGENT, PRINCIPAL, AgentIdentity, Principal
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response
from gateway.oauth.ratelimit import Clock, TokenBucket, retry_after
from pipeline import BaseStage, Next

log = structlog.get_logger("gateway.stages.rate_limit")

RATE_LIMITED = -32029
"""The JSON-RPC error code of a rate-limited request (server-defined range)."""

ANONYMOUS_AGENT = "anonymous"
"""The agent id of requests to a backend marked ``anonymous: true``."""

NEVER_LIMITED = {
    "notifications/initialized": "refusing it would leave the session unusable",
    "notifications/cancelled": "refusing it would keep cancelled work running",
}
"""Methods that ``methods`` may not list, with the reason."""


class AgentLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The token bucket of one agent, replacing the stage's own."""

    per_minute: PositiveInt
    """Requests per minute, on average, for one user of this agent."""
    burst: PositiveInt
    """Requests one user of this agent may send at once before the rate applies."""


class RateLimitConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``rate_limit`` stage."""

    per_minute: PositiveInt
    """Requests per minute, on average, for one user and agent."""
    burst: PositiveInt
    """Requests one user and agent may send at once before the rate applies."""
    agents: dict[str, AgentLimit] = msgspec.field(default_factory=dict)
    """Limits of particular agents, by agent name, instead of the ones above."""
    methods: list[str] | None = None
    """The JSON-RPC methods that are counted and limited.

    Unset: every request (a message with an ``id``), but no notification.
    Set: exactly the messages with these methods, notifications included.
    """
    max_tracked_keys: Annotated[int, msgspec.Meta(ge=100)] = 10_000
    """Buckets kept per limit; the least recently used one is dropped."""

    def __post_init__(self) -> None:
        """Reject an empty ``methods`` list and methods that must pass.

        Raises:
            ValueError: ``methods`` is empty, repeats a method, or lists one
                of :data:`NEVER_LIMITED`.
        """
        if self.methods is None:
            return
        if not self.methods:
            msg = (
                "methods is an empty list, so nothing would be limited; list "
                "methods such as tools/call, or remove methods to limit every "
                "request"
            )
            raise ValueError(msg)
        seen: set[str] = set()
        for method in self.methods:
            if method in NEVER_LIMITED:
                msg = (
                    f"methods must not list {method!r}: {NEVER_LIMITED[method]}; "
                    "remove it"
                )
                raise ValueError(msg)
            if method in seen:
                msg = f"methods lists {method!r} twice; remove one"
                raise ValueError(msg)
            seen.add(method)


class AgentBuckets:
    """The buckets of one stage: the default limit and one per listed agent.

    A bucket is kept per user (issuer and subject) and agent. Each limit
    tracks at most ``max_tracked_keys`` users and agents; past that the least
    recently used one is dropped and starts again with a full bucket.
    """

    def __init__(self, config: RateLimitConfig, *, clock: Clock = time.monotonic):
        def bucket(per_minute: int, burst: int) -> TokenBucket:
            return TokenBucket(
                per_minute, burst, max_keys=config.max_tracked_keys, clock=clock
            )

        self.default = AgentLimit(per_minute=config.per_minute, burst=config.burst)
        self._default = bucket(config.per_minute, config.burst)
        self._agents = {
            name: (limit, bucket(limit.per_minute, limit.burst))
            for name, limit in config.agents.items()
        }

    def limit_of(self, agent_id: str) -> AgentLimit:
        """Return the limit that applies to an agent."""
        entry = self._agents.get(agent_id)
        return entry[0] if entry is not None else self.default

    def acquire(self, principal: Principal, agent_id: str) -> float:
        """Take one token for the user and agent.

        Returns:
            0.0 when the request may pass, else the seconds until it may.
        """
        entry = self._agents.get(agent_id)
        buckets = entry[1] if entry is not None else self._default
        return buckets.acquire(bucket_key(principal, agent_id))

    def should_log(self, principal: Principal, agent_id: str) -> bool:
        """Return whether to log a rejection now: once a minute per key."""
        entry = self._agents.get(agent_id)
        buckets = entry[1] if entry is not None else self._default
        return buckets.should_log(bucket_key(principal, agent_id))


def bucket_key(principal: Principal, agent_id: str) -> str:
    """Return the bucket key of a user and agent; distinct triples never collide."""
    return msgspec.json.encode([principal.iss, principal.sub, agent_id]).decode()


class RateLimitStage(BaseStage[RequestContext, GatewayResponse]):
    """Limit each user and agent to a token-bucket rate of requests.

    Reads ``principal`` and ``agent``, so it sits after ``identify_agent``;
    provides nothing. Each user (issuer and subject) and agent has a bucket
    of ``burst`` tokens that refills at ``per_minute`` a minute, or at the
    agent's own limit under ``agents``. Each counted message takes a token.
    Counted are the POSTed requests, or with ``methods`` set the messages of
    those methods; responses, GET and DELETE never are.

    With no token left, it ends the chain with HTTP 429, a ``Retry-After``
    header (whole seconds, rounded up) and a JSON-RPC error with code
    -32029, ``data.reason`` ``rate_limited`` and ``data.retry_after``. The
    error carries the request's id, or no id for a notification. It
    publishes ``RateLimited`` and logs ``stage.rate_limited`` at most once a
    minute per user and agent.

    The buckets live in this stage instance: each backend's chain has its
    own, a config reload starts them full again, and replicas of the gateway
    each count only the requests they serve.
    """

    requires: ClassVar[frozenset[str]] = frozenset({PRINCIPAL, AGENT})
    stability = "alpha"
    Config = RateLimitConfig

    def __init__(self, *, name: str, config: RateLimitConfig, resources: Any) -> None:
        super().__init__(name=name, config=config, resources=resources)
        self.buckets = AgentBuckets(config)
        self._methods = frozenset(config.methods or ())
        configured = getattr(getattr(resources, "config", None), "agents", None)
        if isinstance(configured, dict):
            known = {*configured, DEFAULT_AGENT, ANONYMOUS_AGENT}
            unknown = sorted(set(config.agents) - known)
            if unknown:
                log.warning(
                    "stage.unknown_agents",
                    stage=name,
                    agents=unknown,
                    detail="no agent has these names, so their limits apply "
                    "to no request; use names from the agents section",
                )

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Take a token for the request, or end the chain with 429."""
        if not self._counts(ctx):
            return await call_next(ctx)
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity = ctx.fact(AGENT)
        wait = self.buckets.acquire(principal, agent.id)
        if wait <= 0:
            return await call_next(ctx)
        return await self._reject(ctx, principal, agent, retry_after(wait))

    def _counts(self, ctx: RequestContext) -> bool:
        message = ctx.message
        if ctx.http_method != "POST" or message is None or message.kind == "response":
            return False
        if self.config.methods is None:
            return message.kind == "request"
        return message.method in self._methods

    async def _reject(
        self,
        ctx: RequestContext,
        principal: Principal,
        agent: AgentIdentity,
        seconds: int,
    ) -> GatewayResponse:
        limit = self.buckets.limit_of(agent.id)
        if self.buckets.should_log(principal, agent.id):
            key = bucket_key(principal, agent.id)
            log.warning(
                "stage.rate_limited",
                stage=self.name,
                request_id=ctx.request_id,
                backend=ctx.backend_name,
                agent_id=agent.id,
                key_hash=hashlib.sha256(key.encode()).hexdigest()[:16],
                retry_after=seconds,
            )
        await ctx.runtime.publish(
            RateLimited(
                **ctx.event_fields(self.name),
                outcome="denied",
                reason="rate_limited",
                retry_after=seconds,
                per_minute=limit.per_minute,
                burst=limit.burst,
            )
        )
        message = ctx.message
        request_id = message.id if message is not None else None
        return jsonrpc_error_response(
            429,
            request_id,
            RATE_LIMITED,
            f"Too many requests: agent {agent.id!r} may send {limit.per_minute} "
            f"requests a minute (burst {limit.burst}) per user to backend "
            f"{ctx.backend_name!r}; retry after {seconds} s",
            reason="rate_limited",
            data={"retry_after": seconds},
            headers={"retry-after": str(seconds)},
            denied=True,
        )
