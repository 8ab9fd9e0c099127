"""OpenTelemetry and structlog set-up for the gateway process.

Tracing settings come from ``telemetry`` in the config, and the standard
``OTEL_*`` variables override the settings they name, so that an operator can
retarget a deployed gateway without editing its file:

- ``OTEL_SDK_DISABLED=true`` installs no tracer provider at all;
- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_ENDPOINT``
  replace ``tracing.endpoint``, and the exporter reads its other
  ``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout, compression,
  certificates) itself; ``OTEL_TRACES_EXPORTER=none`` stops the export;
- ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` replace
  ``tracing.sampler`` and ``tracing.ratio``;
- ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` replace
  ``service_name``.

``tracing.enabled: false`` is the one setting no variable overrides: it keeps
spans unrecorded and unexported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from gateway import __version__
from gateway.asgi_tracing import ComponentSpanProcessor
from gateway.config.model import TelemetryConfig
from gateway.span_redaction import RedactingSpanExporter

log = structlog.get_logger("gateway.telemetry")

SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
"""The variable by which OpenTelemetry instrumentations pick attribute names."""

TRACES_PATH = "/v1/traces"
"""The OTLP/HTTP path of traces, added to a base endpoint."""

_configured = False


def traces_endpoint(config: TelemetryConfig, environ: Mapping[str, str]) -> str | None:
    """Return where spans are exported, or None when nothing is exported.

    The ``OTEL_EXPORTER_OTLP_*`` variables win over ``tracing.endpoint``. A
    variable's URL is returned as the exporter will use it: the traces
    variable as it is, the base one with ``/v1/traces`` added.
    """
    if not config.tracing.enabled:
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or config.tracing.endpoint
    if not base:
        return None
    if base.rstrip("/").endswith(TRACES_PATH):
        return base
    return base.rstrip("/") + TRACES_PATH


def build_sampler(
    config: TelemetryConfig, environ: Mapping[str, str]
) -> Sampler | None:
    """Return the sampler that ``tracing.sampler`` names.

    Returns None when ``OTEL_TRACES_SAMPLER`` is set, so that the SDK reads
    it. ``OTEL_TRACES_SAMPLER_ARG`` replaces ``tracing.ratio`` when it is a
    number from 0 to 1.
    """
    if environ.get("OTEL_TRACES_SAMPLER"):
        return None
    ratio = config.tracing.ratio
    raw_ratio = environ.get("OTEL_TRACES_SAMPLER_ARG")
    if raw_ratio:
        try:
            parsed = float(raw_ratio)
        except ValueError:
            parsed = -1.0
        if 0.0 <= parsed <= 1.0:
            ratio = parsed
        else:
            log.warning(
                "telemetry.invalid_sampler_arg",
                value=raw_ratio[:40],
                used=ratio,
            )
    name = config.tracing.sampler
    if name == "always_on":
        return ALWAYS_ON
    if name == "always_off":
        return ALWAYS_OFF
    if name == "traceidratio":
        return TraceIdRatioBased(ratio)
    if name == "parentbased_always_off":
        return ParentBased(ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(ratio))
    return ParentBased(ALWAYS_ON)


def build_resource(config: TelemetryConfig) -> Resource:
    """Return the resource: ``service.name`` from config unless a variable sets it."""
    attributes: dict[str, Any] = {SERVICE_VERSION: __version__}
    if SERVICE_NAME not in OTELResourceDetector().detect().attributes:
        attributes[SERVICE_NAME] = config.service_name
    return Resource.create(attributes)


def build_tracer_provider(
    config: TelemetryConfig | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """Build the tracer provider that ``config`` and the ``OTEL_*`` variables describe.

    The provider is not installed; :func:`configure_tracing` does that. When
    nothing would be exported and ``OTEL_TRACES_SAMPLER`` is not set, the
    sampler is ``always_off``: spans are not recorded, but still get trace
    and span ids, which audit events, logs and backends receive.

    Returns:
        The provider, or None when ``OTEL_SDK_DISABLED`` is ``true``.
    """
    config = config or TelemetryConfig()
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = traces_endpoint(config, env)
    sampler = build_sampler(config, env)
    if endpoint is None and (sampler is not None or not config.tracing.enabled):
        # Nothing would receive the spans, so none are recorded.
        sampler = ALWAYS_OFF
    provider = TracerProvider(resource=build_resource(config), sampler=sampler)
    provider.add_span_processor(ComponentSpanProcessor())
    if endpoint is not None:
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol != "http/protobuf":
            log.warning(
                "telemetry.unsupported_protocol",
                protocol=protocol[:40],
                used="http/protobuf",
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        from_env = bool(
            env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        # The exporter reads the variables itself; an explicit endpoint
        # would win over them.
        exporter = OTLPSpanExporter(endpoint=None if from_env else endpoint)
        # Exception messages and status descriptions can quote credentials.
        provider.add_span_processor(BatchSpanProcessor(RedactingSpanExporter(exporter)))
    return provider


def configure_tracing(config: TelemetryConfig | None = None) -> TracerProvider | None:
    """Install the tracer provider of :func:`build_tracer_provider` as the global one.

    OpenTelemetry lets a process set its global provider once, so a second
    call does nothing and returns None.

    Returns:
        The provider installed, or None when tracing stays disabled.
    """
    global _configured
    if _configured:
        return None
    config = config or TelemetryConfig()
    provider = build_tracer_provider(config)
    if provider is None:
        return None
    _configured = True
    trace.set_tracer_provider(provider)
    endpoint = traces_endpoint(config, os.environ)
    log.info(
        "telemetry.configured",
        traces_endpoint=_without_userinfo(endpoint) if endpoint else None,
        service_name=provider.resource.attributes.get(SERVICE_NAME),
    )
    return provider


def _without_userinfo(url: str) -> str:
    # A URL may carry credentials as user:password@host; logs never show them.
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def instrument_http_client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Give ``client`` an HTTP client span per request, with W3C trace context sent.

    Only this client is instrumented, not every httpx client of the process.
    Spans go to the global tracer provider, also when it is installed after
    this call. Request and response headers are not recorded unless the
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` variables ask for them.

    The spans carry the stable HTTP attribute names (``url.full``,
    ``server.address``, ``http.response.status_code``), like the gateway's
    own spans: ``OTEL_SEMCONV_STABILITY_OPT_IN`` is set to ``http`` unless
    the operator set it. The instrumentation (0.66b2) reads the variable once
    per process, at its first use, so a value set after that has no effect.

    Returns:
        The same client.
    """
    os.environ.setdefault(SEMCONV_OPT_IN, "http")
    HTTPXClientInstrumentor.instrument_client(client)
    return client


def configure_logging(*, json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog and the standard ``logging``, with redaction.

    See :func:`gateway.logging_setup.configure_logging`.

    Args:
        json: Force JSON (True) or console (False); None picks JSON unless
            stderr is a terminal.
        level: The minimum level name.
    """
    from gateway.logging_setup import configure_logging as configure

    configure(json=json, level=level)
