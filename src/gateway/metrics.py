"""Gateway metrics with the OpenTelemetry SDK, fed by the event bus.

Request, exchange and session figures come from events, through a
best-effort bus subscriber, so the request path only publishes the events it
publishes anyway. Stage times come from the chain, which times each stage
when :meth:`GatewayMetrics.stage_timer` is attached to it. Bus and journal
figures are read from ``EventBus.stats`` when metrics are collected.

Counters are summed in plain dictionaries and reported through observable
instruments. One call of the SDK's synchronous ``add`` or ``record``, which
validates and hashes the attributes, took 8 to 18 microseconds with
opentelemetry-sdk 1.45 on a shared 2-core machine. A dictionary update took
under half a microsecond, and seven stages per request would have cost about
0.1 ms through the SDK. Only the request duration histogram uses the SDK's
``record``, once per request, in the subscriber.

Instruments (Prometheus names in brackets):

- ``mcp.server.operation.duration`` histogram, seconds
  [``mcp_server_operation_duration_seconds``]: one MCP request from arrival
  to the last byte sent, with the OpenTelemetry MCP semantic-convention
  attributes ``mcp.method.name``, ``gen_ai.tool.name``, ``error.type``,
  ``mcp.protocol.version``, ``network.transport`` and
  ``network.protocol.name``, plus ``agent_proxy.backend`` and
  ``agent_proxy.agent.id``.
- ``agent_proxy.requests`` counter [``agent_proxy_requests_total``]: MCP
  requests by ``agent_proxy.backend``, ``mcp.method.name``,
  ``agent_proxy.agent.id``, ``agent_proxy.outcome`` (``success``, ``denied``,
  ``error``), ``error.type`` and ``http.response.status_code``, including
  requests the HTTP layer rejected before the chain.
- ``agent_proxy.stage.time`` counter, seconds, and ``agent_proxy.stage.calls``
  counter: time spent in each stage itself, without the stages after it, and
  how often it ran, by ``agent_proxy.backend`` and ``pipeline.stage``. Their
  rates divided give the mean time per stage.
- ``agent_proxy.exchanges`` counter: backend credential look-ups by
  ``agent_proxy.backend``, ``agent_proxy.auth_kind``, ``agent_proxy.outcome``,
  ``agent_proxy.exchange.cache`` (the ``cache`` of ``TokenExchanged``: ``hit``
  or ``miss``, ``none`` for kinds without a cache, and ``miss`` for a failure)
  and, for failures, ``error.type`` and ``agent_proxy.exchange.step``.
- ``agent_proxy.sessions.active`` observable up-down counter: live gateway
  MCP sessions in the state store.
- ``agent_proxy.bus.events.dropped`` observable counter: events each
  best-effort subscriber dropped, by ``agent_proxy.subscriber``.
- ``agent_proxy.audit.journal.pending`` observable gauge: events journaled
  but not yet delivered, per durable sink (``agent_proxy.sink``).
- ``agent_proxy.audit.events.delivered`` and
  ``agent_proxy.audit.delivery.failures`` observable counters, per sink.

Values that clients choose (MCP method, tool, protocol version) are kept as
attributes only for known methods and versions and for the first
:data:`MAX_DISTINCT_VALUES` distinct values of each attribute; the rest are
recorded as ``_OTHER``, so a client cannot grow the number of series without
bound. Only an authenticated request (an event with a ``user``) can take
one of those slots. An unauthenticated or rejected request records an
unknown method, tool or version as ``_OTHER``, so anonymous clients cannot
use up the slots that real tools need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource

from gateway.events import (
    ExchangeFailed,
    RequestRejected,
    ResponseCompleted,
    TokenExchanged,
)
from gateway.mcp.eras import SUPPORTED_VERSIONS
from gateway.tracing_attributes import AGENT_ID, BACKEND, EXCHANGE_CACHE
from pipeline import Event, EventBus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = structlog.get_logger("gateway.metrics")

SUBSCRIBER_NAME = "metrics"
"""The bus subscriber's name in ``EventBus.stats``."""

MAX_DISTINCT_VALUES = 200
"""Distinct values kept per client-chosen attribute before ``_OTHER`` is used."""

OTHER = "_OTHER"

STAGE = "pipeline.stage"
"""The stage attribute, named as on the stage spans."""

# The MCP semantic conventions advise buckets from 10 ms to 300 s. The gateway
# adds about a millisecond to a request, so finer buckets come first. Every
# advised boundary is kept, so queries written for the convention still work.
# fmt: off
OPERATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
# fmt: on

KNOWN_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    }
)
"""MCP methods a client sends to a server; other method names become
``_OTHER`` once :data:`MAX_DISTINCT_VALUES` names were seen."""

SessionCounter = Callable[[], Any]
"""Returns an awaitable of the number of live sessions."""


class _BoundedValues:
    """Admits the first ``limit`` distinct values, then maps new ones to ``_OTHER``."""

    def __init__(self, limit: int, always: Iterable[str] = ()) -> None:
        self._always = frozenset(always)
        self._seen: set[str] = set()
        self._limit = limit

    def admit(self, value: str, *, new_allowed: bool = True) -> str:
        """Return ``value`` if known or admitted now, else ``_OTHER``.

        With ``new_allowed`` False, a value not already known is not admitted.
        """
        if value in self._always or value in self._seen:
            return value
        if not new_allowed or len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


_Key = tuple[tuple[str, Any], ...]
"""Attributes as a tuple of pairs, which is hashable."""


class _Counts:
    """Cumulative sums by attribute set, reported by an observable counter.

    The event loop adds and the exporter's thread reads. ``list(dict.items())``
    copies the items without releasing the GIL, so a read never iterates
    while the dictionary changes size.
    """

    def __init__(self) -> None:
        self.values: dict[_Key, float] = {}

    def add(self, key: _Key, amount: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(value, dict(key)) for key, value in list(self.values.items())
        ]


class GatewayMetrics:
    """The gateway's instruments and the meter provider that exports them.

    Args:
        readers: Where metrics go: a Prometheus reader, a periodic OTLP
            reader, or an in-memory reader in tests. The provider owns them
            and shuts them down in :meth:`shutdown`.
        resource: The OpenTelemetry resource (``service.name`` and so on).
        bus: The bus whose subscriber and journal figures are observed.
        count_sessions: Returns an awaitable of the number of live sessions;
            it is awaited by :meth:`refresh`, never during collection.
    """

    def __init__(
        self,
        readers: list[MetricReader],
        *,
        resource: Resource,
        bus: EventBus,
        count_sessions: SessionCounter | None = None,
    ) -> None:
        # Exemplars would make every record look up the current span.
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=resource,
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        self.prometheus_registry: CollectorRegistry | None = None
        """The registry that ``/metrics`` renders; None without Prometheus."""
        self.otlp_endpoint: str | None = None
        """Where metrics are exported over OTLP; None for nowhere."""
        self._bus = bus
        self._count_sessions = count_sessions
        self._sessions: int | None = None
        self._sessions_at = 0.0
        self._methods = _BoundedValues(MAX_DISTINCT_VALUES, KNOWN_METHODS)
        self._tools = _BoundedValues(MAX_DISTINCT_VALUES)
        self._versions = _BoundedValues(MAX_DISTINCT_VALUES, SUPPORTED_VERSIONS)
        self._errors = _BoundedValues(MAX_DISTINCT_VALUES)
        meter = self.provider.get_meter("gateway")
        self.operation_duration = meter.create_histogram(
            "mcp.server.operation.duration",
            unit="s",
            description="MCP request duration at the gateway, from arrival to "
            "the last byte of the response.",
            explicit_bucket_boundaries_advisory=OPERATION_BUCKETS,
        )
        self._requests = _Counts()
        self._exchanges = _Counts()
        self._stage_seconds = _Counts()
        self._stage_calls = _Counts()
        self._register_counters(meter)
        self._register_observables(meter)

    def _register_counters(self, meter: Meter) -> None:
        """Register the counters summed by this class, read at collection."""
        meter.create_observable_counter(
            "agent_proxy.requests",
            callbacks=[self._requests.observe],
            unit="{request}",
            description="MCP requests by backend, method, agent and outcome.",
        )
        meter.create_observable_counter(
            "agent_proxy.stage.time",
            callbacks=[self._stage_seconds.observe],
            unit="s",
            description="Time spent in a stage, without the stages after it.",
        )
        meter.create_observable_counter(
            "agent_proxy.stage.calls",
            callbacks=[self._stage_calls.observe],
            unit="{call}",
            description="Times a stage ran.",
        )
        meter.create_observable_counter(
            "agent_proxy.exchanges",
            callbacks=[self._exchanges.observe],
            unit="{exchange}",
            description="Backend credential look-ups by outcome and cache result.",
        )

    def _register_observables(self, meter: Meter) -> None:
        """Register the instruments read at collection time from the bus."""
        meter.create_observable_up_down_counter(
            "agent_proxy.sessions.active",
            callbacks=[self._observe_sessions],
            unit="{session}",
            description="Live gateway MCP sessions in the state store.",
        )
        meter.create_observable_counter(
            "agent_proxy.bus.events.dropped",
            callbacks=[self._observe_dropped],
            unit="{event}",
            description="Events a best-effort bus subscriber dropped because "
            "its queue was full.",
        )
        meter.create_observable_gauge(
            "agent_proxy.audit.journal.pending",
            callbacks=[self._observe_pending],
            unit="{event}",
            description="Audit events journaled on disk but not yet delivered.",
        )
        meter.create_observable_counter(
            "agent_proxy.audit.events.delivered",
            callbacks=[self._observe_durable("delivered")],
            unit="{event}",
            description="Audit events delivered by a durable sink.",
        )
        meter.create_observable_counter(
            "agent_proxy.audit.delivery.failures",
            callbacks=[self._observe_durable("failures")],
            unit="{failure}",
            description="Failed delivery attempts of a durable sink.",
        )

    def subscribe(self, bus: EventBus) -> None:
        """Subscribe :meth:`handle` to ``bus`` for the events it counts."""
        bus.subscribe(
            SUBSCRIBER_NAME,
            self.handle,
            accepts=(
                ResponseCompleted,
                RequestRejected,
                TokenExchanged,
                ExchangeFailed,
            ),
        )

    async def handle(self, event: Event) -> None:
        """Record one event; events of other types are ignored."""
        if isinstance(event, ResponseCompleted):
            self._record_response(event)
        elif isinstance(event, RequestRejected):
            self._record_rejection(event)
        elif isinstance(event, TokenExchanged):
            self._exchanges.add(
                (
                    (BACKEND, event.backend or ""),
                    ("agent_proxy.auth_kind", event.auth_kind),
                    ("agent_proxy.outcome", "success"),
                    (EXCHANGE_CACHE, event.cache or "none"),
                )
            )
        elif isinstance(event, ExchangeFailed):
            self._exchanges.add(
                (
                    (BACKEND, event.backend or ""),
                    ("agent_proxy.auth_kind", event.auth_kind),
                    ("agent_proxy.outcome", event.outcome),
                    (EXCHANGE_CACHE, "miss"),
                    ("agent_proxy.exchange.step", event.step),
                    ("error.type", self._error_type(event.reason, None)),
                )
            )

    def stage_timer(self, backend: str) -> Callable[[str, float], None]:
        """Return the callback that records the stage times of one backend.

        It runs on the request path, so it only updates two dictionaries.
        """
        seconds_by_key = self._stage_seconds.values
        calls_by_key = self._stage_calls.values
        keys: dict[str, _Key] = {}

        def record(stage: str, seconds: float) -> None:
            key = keys.get(stage)
            if key is None:
                key = keys[stage] = ((BACKEND, backend), (STAGE, stage))
            seconds_by_key[key] = seconds_by_key.get(key, 0.0) + seconds
            calls_by_key[key] = calls_by_key.get(key, 0) + 1

        return record

    async def refresh(self, max_age: float = 0.0) -> None:
        """Read the number of live sessions unless it is younger than ``max_age``.

        Observable callbacks run synchronously, some on the exporter's thread,
        so the asynchronous store is read here and the callback reports the
        last value read.
        """
        if self._count_sessions is None:
            return
        if time.monotonic() - self._sessions_at < max_age:
            return
        try:
            self._sessions = int(await self._count_sessions())
        except Exception as exc:
            log.warning("metrics.sessions_count_failed", error=type(exc).__name__)
            return
        self._sessions_at = time.monotonic()

    async def refresh_forever(self, interval: float) -> None:
        """Call :meth:`refresh` every ``interval`` seconds until cancelled."""
        while True:
            await self.refresh()
            await anyio.sleep(interval)

    def render_prometheus(self, accept: str | None = None) -> tuple[bytes, str]:
        """Return the Prometheus exposition and its content type.

        ``accept`` is the scraper's ``Accept`` header; OpenMetrics is returned
        when its ``Accept`` header requests it, the text format 0.0.4 otherwise.

        Raises:
            RuntimeError: Prometheus is off (``metrics.prometheus: false``).
        """
        from prometheus_client.exposition import choose_encoder

        if self.prometheus_registry is None:
            msg = "metrics.prometheus is off, so there is nothing to render"
            raise RuntimeError(msg)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.prometheus_registry), content_type

    def shutdown(self) -> None:
        """Export what is pending and stop every reader."""
        self.provider.shutdown()

    def _error_type(self, reason: str | None, status: int | None) -> str:
        # Reasons are stable codes, except the free-text description of a
        # stream that failed, so they are bounded and shortened too.
        if reason:
            return self._errors.admit(reason[:64])
        return str(status) if status is not None else OTHER

    def _method(self, method: str | None, authenticated: bool) -> str:
        if not method:
            return OTHER
        return self._methods.admit(method, new_allowed=authenticated)

    def _record_response(self, event: ResponseCompleted) -> None:
        authenticated = event.user is not None
        method = self._method(event.method, authenticated)
        agent = event.agent.id if event.agent else ""
        backend = event.backend or ""
        failed = event.outcome != "success"
        error_type = self._error_type(event.reason, event.status) if failed else None
        counted: _Key = (
            (BACKEND, backend),
            ("mcp.method.name", method),
            (AGENT_ID, agent),
            ("agent_proxy.outcome", event.outcome),
            ("http.response.status_code", event.status),
        )
        if error_type is not None:
            counted += (("error.type", error_type),)
        self._requests.add(counted)
        timed: dict[str, Any] = {
            "mcp.method.name": method,
            "network.transport": "tcp",
            "network.protocol.name": "http",
            BACKEND: backend,
            AGENT_ID: agent,
        }
        if event.tool and event.method == "tools/call":
            timed["gen_ai.tool.name"] = self._tools.admit(
                event.tool, new_allowed=authenticated
            )
        if event.protocol_version:
            timed["mcp.protocol.version"] = self._versions.admit(
                event.protocol_version, new_allowed=authenticated
            )
        if error_type is not None:
            timed["error.type"] = error_type
        self.operation_duration.record(event.duration_ms / 1000.0, timed)

    def _record_rejection(self, event: RequestRejected) -> None:
        self._requests.add(
            (
                (BACKEND, event.backend or ""),
                ("mcp.method.name", self._method(event.method, False)),
                (AGENT_ID, ""),
                ("agent_proxy.outcome", event.outcome),
                ("http.response.status_code", event.status),
                ("error.type", self._error_type(event.reason, event.status)),
            )
        )

    def _observe_sessions(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._sessions is None:
            return []
        return [Observation(self._sessions)]

    def _observe_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(stats.get("dropped", 0)), {"agent_proxy.subscriber": name})
            for name, stats in self._bus.stats().items()
            if stats.get("kind") == "best_effort"
        ]

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(stats.get("pending", 0)), {"agent_proxy.sink": name})
            for name, stats in self._bus.stats().items()
            if stats.get("kind") == "durable"
        ]

    def _observe_durable(
        self, key: str
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(int(stats.get(key, 0)), {"agent_proxy.sink": name})
                for name, stats in self._bus.stats().items()
                if stats.get("kind") == "durable"
            ]

        return observe
