"""Structure of observability/: the compose file, the collector config, the guide.

Docker and the collector binary cannot run on the test machine, so these
tests parse both files with PyYAML. They check what would make the stack fail
to start or fail to connect: references to undefined components, unpinned
images, ports that differ between the compose file, the collector config and
the operator guide, and a guide config that the gateway would reject.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import yaml

from gateway.audit.config import AuditConfig
from gateway.audit.otlp import SCOPE_NAME
from gateway.config.model import TelemetryConfig

FOLDER = Path(__file__).resolve().parents[2] / "observability"
COMPONENT_ID = re.compile(r"^[a-zA-Z][0-9a-zA-Z_]{0,62}(/[^/]+)?$")
PINNED_TAG = re.compile(r"^[\w.-]+/[\w.-]+:\d+\.\d+\.\d+$")
SECTIONS = ("receivers", "processors", "exporters")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (FOLDER / "docker-compose.yaml").read_text()
    )
    return document


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (FOLDER / "otel-collector.yaml").read_text()
    )
    return document


@pytest.fixture(scope="module")
def guide() -> str:
    return (FOLDER / "README.md").read_text()


def published(compose: dict[str, Any], service: str) -> dict[int, tuple[str, int]]:
    """Return container port -> (host address, host port) of a service."""
    ports: dict[int, tuple[str, int]] = {}
    for entry in compose["services"][service].get("ports", []):
        host, host_port, container_port = str(entry).split(":")
        ports[int(container_port)] = (host, int(host_port))
    return ports


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_compose_images_pinned(compose: dict[str, Any]) -> None:
    """Every image names an exact version, never latest."""
    for name, service in compose["services"].items():
        image = service["image"]
        assert PINNED_TAG.match(image), f"{name}: {image}"
        assert not image.endswith(":latest"), name


def test_compose_references_defined(compose: dict[str, Any]) -> None:
    """depends_on names services, named volumes are declared, bind mounts exist."""
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (FOLDER / source).is_file(), f"{name}: {source}"
            else:
                assert source in declared_volumes, f"{name}: {source}"


def test_compose_ports_on_loopback(compose: dict[str, Any]) -> None:
    """Every published port listens on 127.0.0.1 only."""
    for name in compose["services"]:
        for container_port, (host, _) in published(compose, name).items():
            assert host == "127.0.0.1", f"{name}:{container_port}"


def test_compose_mounts_collector_config(compose: dict[str, Any]) -> None:
    """The collector reads the mounted otel-collector.yaml."""
    service = compose["services"]["otel-collector"]
    [config_arg] = [arg for arg in service["command"] if arg.startswith("--config=")]
    target = config_arg.split("=", 1)[1]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    assert mounts["./otel-collector.yaml"] == target
    assert "contrib" in service["image"]


def test_collector_pipelines_reference_defined_components(
    collector: dict[str, Any],
) -> None:
    """Each pipeline uses only receivers, processors and exporters defined above."""
    pipelines = collector["service"]["pipelines"]
    assert set(pipelines) >= {"traces", "metrics", "logs/audit"}
    for pipeline_id, pipeline in pipelines.items():
        assert pipeline_id.split("/")[0] in ("traces", "metrics", "logs")
        assert pipeline.get("receivers"), pipeline_id
        assert pipeline.get("exporters"), pipeline_id
        for section in SECTIONS:
            for component in pipeline.get(section, []):
                assert component in (collector.get(section) or {}), (
                    f"service::pipelines::{pipeline_id}: {section[:-1]} "
                    f"{component!r} is not configured"
                )


def test_collector_components_all_used(collector: dict[str, Any]) -> None:
    """Every configured component has a valid id and is used somewhere."""
    pipelines = collector["service"]["pipelines"].values()
    for section in SECTIONS:
        used = {c for pipeline in pipelines for c in pipeline.get(section, [])}
        for component in collector.get(section) or {}:
            assert COMPONENT_ID.match(component), component
            assert component in used, f"{section}: {component} is unused"
    for extension in collector.get("extensions") or {}:
        assert extension in collector["service"]["extensions"], extension


def test_collector_processor_order(collector: dict[str, Any]) -> None:
    """memory_limiter runs first and batch last in every pipeline."""
    for pipeline_id, pipeline in collector["service"]["pipelines"].items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", pipeline_id
        assert processors[-1] == "batch", pipeline_id


def test_collector_routes_signals(collector: dict[str, Any]) -> None:
    """Traces go to Jaeger, audit records to a file, metrics to Prometheus."""
    pipelines = collector["service"]["pipelines"]
    exporters = collector["exporters"]
    [traces_exporter] = pipelines["traces"]["exporters"]
    assert urlsplit("//" + exporters[traces_exporter]["endpoint"]).hostname == "jaeger"
    [audit_exporter] = pipelines["logs/audit"]["exporters"]
    assert audit_exporter.split("/")[0] == "file"
    assert "prometheus" in pipelines["metrics"]["exporters"]


def test_collector_keeps_only_audit_scope(collector: dict[str, Any]) -> None:
    """The audit log pipeline keeps the scope that the otlp audit sink uses."""
    filters = [
        p
        for p in collector["service"]["pipelines"]["logs/audit"]["processors"]
        if p.startswith("filter")
    ]
    [name] = filters
    [condition] = collector["processors"][name]["logs"]["log_record"]
    assert condition == f'instrumentation_scope.name != "{SCOPE_NAME}"'


def test_ports_agree_between_compose_and_collector(
    compose: dict[str, Any], collector: dict[str, Any]
) -> None:
    """Ports the collector listens on are the ones compose publishes."""
    ports = published(compose, "otel-collector")
    protocols = collector["receivers"]["otlp"]["protocols"]
    for protocol in ("grpc", "http"):
        port = port_of(protocols[protocol]["endpoint"])
        assert ports[port] == ("127.0.0.1", port), protocol
    prometheus = port_of(collector["exporters"]["prometheus"]["endpoint"])
    assert prometheus in ports
    health = port_of(collector["extensions"]["health_check"]["endpoint"])
    assert health in ports
    jaeger = port_of(collector["exporters"]["otlp/jaeger"]["endpoint"])
    assert str(jaeger) in [str(p) for p in compose["services"]["jaeger"]["expose"]]
    assert 16686 in published(compose, "jaeger")


def test_audit_file_lands_in_volume(
    compose: dict[str, Any], collector: dict[str, Any]
) -> None:
    """The file exporter writes inside the volume mounted for it."""
    path = collector["exporters"]["file/audit"]["path"]
    mounts = [v.split(":")[1] for v in compose["services"]["otel-collector"]["volumes"]]
    assert any(path.startswith(target + "/") for target in mounts), path


def test_guide_endpoints_match_published_ports(
    compose: dict[str, Any], guide: str
) -> None:
    """Every loopback URL in the guide uses a port that compose publishes."""
    host_ports = {
        host_port
        for name in compose["services"]
        for _, host_port in published(compose, name).values()
    }
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)", guide)
    assert urls
    gateway_ports = {"8000", "9000"}
    for port in urls:
        assert port in gateway_ports or int(port) in host_ports, port
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318" in guide


def test_guide_config_is_valid(guide: str) -> None:
    """The config snippet in the guide is accepted by the gateway's config model."""
    blocks = re.findall(r"```yaml\n(.*?)```", guide, flags=re.DOTALL)
    [snippet] = [yaml.safe_load(block) for block in blocks if "telemetry" in block]
    telemetry = msgspec.convert(snippet["telemetry"], TelemetryConfig)
    audit = msgspec.convert(snippet["stages"]["audit"], AuditConfig)
    assert port_of(urlsplit(telemetry.tracing.endpoint).netloc) == 4318
    kinds = [sink.__struct_config__.tag for sink in audit.sinks]
    assert kinds == ["jsonl", "otlp"]
    otlp_sink = snippet["stages"]["audit"]["sinks"][1]
    assert otlp_sink["endpoint"] == "http://127.0.0.1:4318/v1/logs"
