"""Gateway metrics: what each event records, bounded attributes, observed figures.

The metrics read an in-memory reader of the OpenTelemetry SDK. Events are
handed to the subscriber directly; the bus whose figures are observed is a
real one with a real journal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.resources import Resource

from gateway.config.model import MetricsConfig, TelemetryConfig, TracingConfig
from gateway.events import (
    AgentRef,
    ExchangeFailed,
    RequestRejected,
    ResponseCompleted,
    TokenExchanged,
    UserRef,
)
from gateway.metrics import MAX_DISTINCT_VALUES, OTHER, GatewayMetrics
from gateway.metrics_setup import build_gateway_metrics, metrics_endpoint
from pipeline import EventBus, Journal

CURSOR = AgentRef(id="cursor", verified=False, trust="self-asserted")
ALICE = UserRef(iss="https://idp.example", sub="alice")


def build(bus: EventBus | None = None, sessions: int | None = None) -> Any:
    reader = InMemoryMetricReader()

    async def count() -> int:
        assert sessions is not None
        return sessions

    metrics = GatewayMetrics(
        [reader],
        resource=Resource.create({"service.name": "test"}),
        bus=bus or EventBus(),
        count_sessions=count if sessions is not None else None,
    )
    return metrics, reader


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found: list[Any] = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def completed(**changes: Any) -> ResponseCompleted:
    fields: dict[str, Any] = {
        "backend": "employees",
        "method": "tools/call",
        "tool": "list_employees",
        "agent": CURSOR,
        "user": ALICE,
        "protocol_version": "2025-11-25",
        "status": 200,
        "duration_ms": 12.5,
        "streamed": False,
        "bytes_sent": 100,
    }
    fields.update(changes)
    return ResponseCompleted(**fields)


@pytest.mark.anyio
async def test_metrics_response_counted_and_timed() -> None:
    """A completed tools/call adds a request and an operation duration in seconds."""
    metrics, reader = build()
    await metrics.handle(completed())
    [counted] = points(reader, "agent_proxy.requests")
    assert isinstance(counted, NumberDataPoint)
    assert counted.value == 1
    assert dict(counted.attributes or {}) == {
        "agent_proxy.backend": "employees",
        "mcp.method.name": "tools/call",
        "agent_proxy.agent.id": "cursor",
        "agent_proxy.outcome": "success",
        "http.response.status_code": 200,
    }
    [timed] = points(reader, "mcp.server.operation.duration")
    assert isinstance(timed, HistogramDataPoint)
    assert timed.sum == pytest.approx(0.0125)
    attributes = dict(timed.attributes or {})
    assert attributes["gen_ai.tool.name"] == "list_employees"
    assert attributes["mcp.protocol.version"] == "2025-11-25"
    assert attributes["network.transport"] == "tcp"
    assert "error.type" not in attributes


@pytest.mark.anyio
async def test_metrics_denial_carries_error_type() -> None:
    """A denied request records its reason as error.type on both instruments."""
    metrics, reader = build()
    await metrics.handle(
        completed(outcome="denied", reason="tool_denied", status=200, tool="x")
    )
    [counted] = points(reader, "agent_proxy.requests")
    assert (counted.attributes or {})["agent_proxy.outcome"] == "denied"
    assert (counted.attributes or {})["error.type"] == "tool_denied"
    [timed] = points(reader, "mcp.server.operation.duration")
    assert (timed.attributes or {})["error.type"] == "tool_denied"


@pytest.mark.anyio
async def test_metrics_rejection_counted_without_duration() -> None:
    """A request rejected before the chain is counted but not timed."""
    metrics, reader = build()
    await metrics.handle(
        RequestRejected(
            backend="employees",
            outcome="error",
            reason="headers_too_large",
            status=431,
            detail="Request Header Fields Too Large",
        )
    )
    [counted] = points(reader, "agent_proxy.requests")
    assert (counted.attributes or {})["error.type"] == "headers_too_large"
    assert (counted.attributes or {})["mcp.method.name"] == OTHER
    assert points(reader, "mcp.server.operation.duration") == []


@pytest.mark.anyio
async def test_metrics_exchanges_by_cache_and_outcome() -> None:
    """Exchanges are counted by cache result, and failures by step and reason."""
    metrics, reader = build()
    for cache in ("miss", "hit", "hit"):
        await metrics.handle(
            TokenExchanged(backend="employees", auth_kind="id-jag", cache=cache)
        )
    await metrics.handle(TokenExchanged(backend="partners", auth_kind="static-key"))
    await metrics.handle(
        ExchangeFailed(
            backend="employees",
            auth_kind="id-jag",
            step="token_exchange",
            outcome="error",
            reason="idp_unavailable",
            detail="the IdP token endpoint returned HTTP 503",
        )
    )
    by_key = {
        (
            (p.attributes or {})["agent_proxy.exchange.cache"],
            (p.attributes or {})["agent_proxy.outcome"],
        ): p.value
        for p in points(reader, "agent_proxy.exchanges")
    }
    assert by_key == {
        ("miss", "success"): 1,
        ("hit", "success"): 2,
        ("none", "success"): 1,
        ("miss", "error"): 1,
    }
    [failed] = [
        p
        for p in points(reader, "agent_proxy.exchanges")
        if (p.attributes or {})["agent_proxy.outcome"] == "error"
    ]
    assert (failed.attributes or {})["agent_proxy.exchange.step"] == "token_exchange"
    assert (failed.attributes or {})["error.type"] == "idp_unavailable"


@pytest.mark.anyio
async def test_metrics_client_chosen_values_bounded() -> None:
    """Unknown methods and tools beyond the limit become _OTHER."""
    metrics, reader = build()
    for index in range(MAX_DISTINCT_VALUES + 5):
        await metrics.handle(completed(method=f"x/{index}", tool=None))
        await metrics.handle(completed(tool=f"tool_{index}"))
    methods = {
        (p.attributes or {})["mcp.method.name"]
        for p in points(reader, "agent_proxy.requests")
    }
    tools = {
        (p.attributes or {}).get("gen_ai.tool.name")
        for p in points(reader, "mcp.server.operation.duration")
    }
    assert OTHER in methods
    assert "tools/call" in methods
    assert len(methods) == MAX_DISTINCT_VALUES + 2
    assert OTHER in tools
    assert len(tools - {None}) == MAX_DISTINCT_VALUES + 1


@pytest.mark.anyio
async def test_metrics_stage_timer_sums_time_and_calls() -> None:
    """The stage timer of a backend sums seconds and calls per stage."""
    metrics, reader = build()
    record = metrics.stage_timer("employees")
    record("exchange", 0.002)
    record("exchange", 0.004)
    record("forward", 0.001)
    seconds = {
        (p.attributes or {})["pipeline.stage"]: p.value
        for p in points(reader, "agent_proxy.stage.time")
    }
    calls = {
        (p.attributes or {})["pipeline.stage"]: p.value
        for p in points(reader, "agent_proxy.stage.calls")
    }
    assert seconds == pytest.approx({"exchange": 0.006, "forward": 0.001})
    assert calls == {"exchange": 2, "forward": 1}
    [point, _] = points(reader, "agent_proxy.stage.calls")
    assert (point.attributes or {})["agent_proxy.backend"] == "employees"


@pytest.mark.anyio
async def test_metrics_observe_bus_journal_and_sessions(tmp_path: Path) -> None:
    """Dropped events, journal depth and live sessions are observed at collection."""
    bus = EventBus()
    bus.subscribe("slow", _ignore, max_queue=1)

    class Unreachable:
        async def deliver(self, batch: Any) -> None:
            raise ConnectionError("down")

    journal = Journal(tmp_path / "audit.journal", max_pending=100, fsync=False)
    bus.subscribe_durable("audit.webhook.0", Unreachable(), journal)
    for _ in range(3):
        await bus.publish(completed())
    metrics, reader = build(bus, sessions=7)
    await metrics.refresh()
    [dropped] = points(reader, "agent_proxy.bus.events.dropped")
    assert (dropped.attributes or {})["agent_proxy.subscriber"] == "slow"
    assert dropped.value == 2
    [pending] = points(reader, "agent_proxy.audit.journal.pending")
    assert (pending.attributes or {})["agent_proxy.sink"] == "audit.webhook.0"
    assert pending.value == 3
    [sessions] = points(reader, "agent_proxy.sessions.active")
    assert sessions.value == 7
    journal.close()


async def _ignore(event: Any) -> None:
    return None


def test_metrics_endpoint_from_tracing_base() -> None:
    """Without a metrics endpoint, the base of tracing.endpoint is used."""
    config = TelemetryConfig(
        tracing=TracingConfig(endpoint="http://collector:4318/v1/traces")
    )
    assert metrics_endpoint(config, {}) == "http://collector:4318/v1/metrics"


def test_metrics_endpoint_variables_override_config() -> None:
    """OTEL_* variables win over the config, and 'none' turns export off."""
    config = TelemetryConfig(metrics=MetricsConfig(endpoint="http://a:4318"))
    assert metrics_endpoint(config, {}) == "http://a:4318/v1/metrics"
    assert (
        metrics_endpoint(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://b:4318/"})
        == "http://b:4318/v1/metrics"
    )
    explicit = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:9/m"}
    assert metrics_endpoint(config, explicit) == "http://c:9/m"
    assert metrics_endpoint(config, {"OTEL_METRICS_EXPORTER": "none"}) is None


def test_metrics_endpoint_none_without_any_setting() -> None:
    """With no endpoint anywhere, metrics are only served on /metrics."""
    assert metrics_endpoint(TelemetryConfig(), {}) is None


def test_metrics_build_disabled_returns_none() -> None:
    """metrics.enabled false or OTEL_SDK_DISABLED builds nothing."""
    off = TelemetryConfig(metrics=MetricsConfig(enabled=False))
    assert build_gateway_metrics(off, bus=EventBus(), environ={}) is None
    disabled = {"OTEL_SDK_DISABLED": "true"}
    assert (
        build_gateway_metrics(TelemetryConfig(), bus=EventBus(), environ=disabled)
        is None
    )


@pytest.mark.anyio
async def test_metrics_prometheus_renders_text_format() -> None:
    """The Prometheus registry renders the instruments in the text format."""
    metrics = build_gateway_metrics(TelemetryConfig(), bus=EventBus(), environ={})
    assert metrics is not None
    await metrics.handle(completed())
    body, content_type = metrics.render_prometheus("text/plain")
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "agent_proxy_requests_total{" in text
    assert "mcp_server_operation_duration_seconds_bucket{" in text
    assert 'service_name="agent-proxy"' in text
    metrics.shutdown()


@pytest.mark.anyio
async def test_metrics_prometheus_negotiates_openmetrics() -> None:
    """A scraper whose Accept header requests OpenMetrics gets it."""
    metrics = build_gateway_metrics(TelemetryConfig(), bus=EventBus(), environ={})
    assert metrics is not None
    accept = "application/openmetrics-text; version=1.0.0"
    body, content_type = metrics.render_prometheus(accept)
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    metrics.shutdown()
