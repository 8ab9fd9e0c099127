"""Tracing set-up: ``telemetry`` config, the ``OTEL_*`` overrides, user identifiers."""

from __future__ import annotations

import hashlib

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)

from gateway.config import ConfigError, load_config_text
from gateway.config.model import TelemetryConfig, TracingConfig
from gateway.telemetry import (
    build_resource,
    build_sampler,
    build_tracer_provider,
    traces_endpoint,
)
from gateway.tracing_attributes import user_attributes

COLLECTOR = "http://127.0.0.1:4318"

MINIMAL_CONFIG = """
server: {public_url: "http://127.0.0.1:8000"}
upstream: {issuer: "http://127.0.0.1:9000", client_id: gw}
backends:
  open: {path: /open/mcp, url: "http://127.0.0.1:8001/mcp", anonymous: true}
"""


def telemetry(**tracing: object) -> TelemetryConfig:
    return TelemetryConfig(tracing=TracingConfig(**tracing))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        ("", {}, None),
        (COLLECTOR, {}, f"{COLLECTOR}/v1/traces"),
        (f"{COLLECTOR}/", {}, f"{COLLECTOR}/v1/traces"),
        (f"{COLLECTOR}/v1/traces", {}, f"{COLLECTOR}/v1/traces"),
        (
            COLLECTOR,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"},
            "http://env:4318/v1/traces",
        ),
        (
            COLLECTOR,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9/custom",
            },
            "http://traces:9/custom",
        ),
        (
            "",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"},
            "http://env:4318/v1/traces",
        ),
        (COLLECTOR, {"OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_traces_endpoint_variables_win_over_config(
    configured: str, environ: dict[str, str], expected: str | None
) -> None:
    """The OTLP variables replace ``tracing.endpoint``; a base URL gets /v1/traces."""
    assert traces_endpoint(telemetry(endpoint=configured), environ) == expected


def test_traces_endpoint_disabled_ignores_variables() -> None:
    """``tracing.enabled: false`` exports nothing, whatever the variables say."""
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}
    assert (
        traces_endpoint(telemetry(enabled=False, endpoint=COLLECTOR), environ) is None
    )


def test_build_sampler_names_map_to_sdk_samplers() -> None:
    """Each ``tracing.sampler`` name gives the SDK sampler of the same name."""
    assert build_sampler(telemetry(sampler="always_on"), {}) is ALWAYS_ON
    assert build_sampler(telemetry(sampler="always_off"), {}) is ALWAYS_OFF
    ratio = build_sampler(telemetry(sampler="traceidratio", ratio=0.25), {})
    assert isinstance(ratio, TraceIdRatioBased)
    assert ratio.rate == 0.25
    parent = build_sampler(telemetry(sampler="parentbased_traceidratio"), {})
    assert isinstance(parent, ParentBased)
    assert isinstance(build_sampler(telemetry(), {}), ParentBased)


def test_build_sampler_variables_win_over_config() -> None:
    """``OTEL_TRACES_SAMPLER`` leaves the choice to the SDK; the ARG sets the ratio."""
    config = telemetry(sampler="traceidratio", ratio=0.25)
    assert build_sampler(config, {"OTEL_TRACES_SAMPLER": "always_on"}) is None
    from_arg = build_sampler(config, {"OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert isinstance(from_arg, TraceIdRatioBased)
    assert from_arg.rate == 0.5
    invalid = build_sampler(config, {"OTEL_TRACES_SAMPLER_ARG": "lots"})
    assert isinstance(invalid, TraceIdRatioBased)
    assert invalid.rate == 0.25


def test_build_resource_service_name_variable_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``service_name`` names the service unless OTEL_SERVICE_NAME does."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    config = TelemetryConfig(service_name="edge-gateway")
    assert build_resource(config).attributes[SERVICE_NAME] == "edge-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert build_resource(config).attributes[SERVICE_NAME] == "from-env"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert build_resource(config).attributes[SERVICE_NAME] == "from-attributes"


def test_build_tracer_provider_sdk_disabled_none() -> None:
    """``OTEL_SDK_DISABLED=true`` builds no provider at all."""
    config = telemetry(endpoint=COLLECTOR)
    assert build_tracer_provider(config, environ={"OTEL_SDK_DISABLED": "true"}) is None


def test_build_tracer_provider_nothing_exported_records_nothing() -> None:
    """Without an endpoint spans are not recorded but still carry valid ids."""
    provider = build_tracer_provider(telemetry(sampler="always_on"), environ={})
    assert provider is not None
    span = provider.get_tracer("test").start_span("work")
    assert not span.is_recording()
    assert span.get_span_context().is_valid
    provider.shutdown()


def test_build_tracer_provider_endpoint_records_spans() -> None:
    """With an endpoint the configured sampler applies and spans are recorded."""
    provider = build_tracer_provider(
        telemetry(endpoint="http://127.0.0.1:9", sampler="always_on"), environ={}
    )
    assert provider is not None
    span = provider.get_tracer("test").start_span("work")
    assert span.is_recording()
    # The span is not ended, so nothing is exported to the closed port.
    provider.shutdown()


def test_telemetry_config_defaults_and_invalid_endpoint() -> None:
    """The section is optional, and an endpoint that is not a URL is rejected."""
    config = load_config_text(MINIMAL_CONFIG)
    assert config.telemetry.user_identifiers == "hashed"
    assert config.telemetry.tracing.sampler == "parentbased_always_on"
    with pytest.raises(ConfigError) as caught:
        load_config_text(MINIMAL_CONFIG + "telemetry: {tracing: {endpoint: collector}}")
    assert "tracing.endpoint" in str(caught.value.problems)


def test_user_attributes_each_mode() -> None:
    """Users appear hashed, in plain, or not at all, as configured."""
    iss, sub = "https://idp.example", "00u_alice"
    digest = hashlib.sha256(b"https://idp.example 00u_alice").hexdigest()
    assert user_attributes(iss, sub, "hashed") == {"agent_proxy.user.hash": digest}
    assert user_attributes(iss, sub, "plain") == {
        "agent_proxy.user.iss": iss,
        "agent_proxy.user.sub": sub,
    }
    assert user_attributes(iss, sub, "omit") == {}
