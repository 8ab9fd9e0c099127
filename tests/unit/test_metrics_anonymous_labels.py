"""Anonymous requests cannot use up the metric attribute slots of real values.

The metrics subscriber is fed real gateway events directly and read through
the OpenTelemetry SDK's in-memory reader.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from gateway.events import AgentRef, RequestRejected, ResponseCompleted, UserRef
from gateway.metrics import MAX_DISTINCT_VALUES, OTHER, GatewayMetrics
from pipeline import EventBus

pytestmark = pytest.mark.anyio

ALICE = UserRef(iss="https://idp.example", sub="alice")
CURSOR = AgentRef(id="cursor", verified=False, trust="self-asserted")


def attribute_values(reader: InMemoryMetricReader, metric: str, key: str) -> set[Any]:
    data = reader.get_metrics_data()
    values: set[Any] = set()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for found in scope.metrics:
                if found.name == metric:
                    for point in found.data.data_points:
                        values.add((point.attributes or {}).get(key))
    return values


def anonymous_call(index: int) -> ResponseCompleted:
    """A tools/call that the authenticate stage rejected with 401."""
    return ResponseCompleted(
        backend="employees",
        method="tools/call",
        tool=f"anon_{index}",
        protocol_version=f"2099-01-{index}",
        outcome="denied",
        reason="invalid_token",
        status=401,
        duration_ms=1.0,
        streamed=False,
        bytes_sent=80,
    )


async def test_metrics_anonymous_calls_keep_tool_slots() -> None:
    """Unauthenticated calls with made-up names leave slots for real tools."""
    reader = InMemoryMetricReader()
    metrics = GatewayMetrics(
        [reader], resource=Resource.create({"service.name": "test"}), bus=EventBus()
    )

    for index in range(MAX_DISTINCT_VALUES + 10):
        await metrics.handle(anonymous_call(index))
        await metrics.handle(
            ResponseCompleted(
                backend="employees",
                method=f"made/up/{index}",
                outcome="denied",
                reason="invalid_token",
                status=401,
                duration_ms=1.0,
                streamed=False,
                bytes_sent=80,
            )
        )
        await metrics.handle(
            RequestRejected(
                backend="employees",
                method=f"rejected/{index}",
                outcome="error",
                reason="invalid_request",
                status=400,
                detail="Bad Request",
            )
        )

    await metrics.handle(
        ResponseCompleted(
            backend="employees",
            method="tools/call",
            tool="update_salary",
            user=ALICE,
            agent=CURSOR,
            protocol_version="2025-11-25",
            status=200,
            duration_ms=5.0,
            streamed=False,
            bytes_sent=120,
        )
    )

    duration = "mcp.server.operation.duration"
    tools = attribute_values(reader, duration, "gen_ai.tool.name")
    methods = attribute_values(reader, "agent_proxy.requests", "mcp.method.name")
    versions = attribute_values(reader, duration, "mcp.protocol.version")
    assert tools - {None} == {OTHER, "update_salary"}
    assert methods == {OTHER, "tools/call"}
    assert versions - {None} == {OTHER, "2025-11-25"}
