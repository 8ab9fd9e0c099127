"""Building the metrics of a gateway from ``telemetry`` and ``OTEL_*`` variables.

The readers are chosen here: a Prometheus reader with a registry of its own
for ``GET /metrics``, and a periodic OTLP/HTTP (protobuf) reader when an
endpoint is known.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.sdk.metrics.export import MetricReader

from gateway.config.model import TelemetryConfig
from gateway.metrics import GatewayMetrics, SessionCounter
from gateway.telemetry import TRACES_PATH, build_resource
from pipeline import EventBus

METRICS_PATH = "/v1/metrics"
"""The OTLP/HTTP path of metrics, added to a base endpoint."""


def metrics_endpoint(config: TelemetryConfig, environ: Mapping[str, str]) -> str | None:
    """Return where metrics are exported over OTLP, or None for nowhere.

    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` is used as it is;
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``metrics.endpoint`` and then the base
    of ``tracing.endpoint`` get ``/v1/metrics`` added. ``OTEL_METRICS_EXPORTER``
    set to ``none`` stops the export.
    """
    if not config.metrics.enabled:
        return None
    if environ.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
        return None
    explicit = environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    if explicit:
        return explicit
    base = (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or config.metrics.endpoint
        or config.tracing.endpoint.rstrip("/").removesuffix(TRACES_PATH)
    )
    if not base:
        return None
    if base.rstrip("/").endswith(METRICS_PATH):
        return base
    return base.rstrip("/") + METRICS_PATH


def build_gateway_metrics(
    config: TelemetryConfig,
    *,
    bus: EventBus,
    count_sessions: SessionCounter | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayMetrics | None:
    """Build the metrics of one gateway from ``telemetry`` and ``OTEL_*`` variables.

    The readers are a Prometheus reader with a registry of its own when
    ``metrics.prometheus`` is on, and a periodic OTLP/HTTP (protobuf) reader
    when :func:`metrics_endpoint` names an endpoint.

    Returns:
        The metrics, or None when ``metrics.enabled`` is false,
        ``OTEL_SDK_DISABLED`` is ``true``, or no reader would receive them.
    """
    env = os.environ if environ is None else environ
    if not config.metrics.enabled:
        return None
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    readers: list[MetricReader] = []
    registry = None
    if config.metrics.prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        readers.append(
            PrometheusMetricReader(registry=registry, scope_info_enabled=False)
        )
    endpoint = metrics_endpoint(config, env)
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        from_env = bool(
            env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        # The exporter and the reader read their variables themselves; an
        # explicit argument would win over them.
        interval = (
            None
            if env.get("OTEL_METRIC_EXPORT_INTERVAL")
            else config.metrics.export_interval * 1000
        )
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=None if from_env else endpoint),
                export_interval_millis=interval,
            )
        )
    if not readers:
        return None
    metrics = GatewayMetrics(
        readers,
        resource=build_resource(config),
        bus=bus,
        count_sessions=count_sessions,
    )
    metrics.prometheus_registry = registry
    metrics.otlp_endpoint = endpoint
    return metrics
