"""Helpers of the audit integration tests.

A demo stack with chosen audit sinks, a webhook receiver process, a real
OTLP/HTTP logs receiver decoding protobuf with ``opentelemetry-proto``, and
the checks a webhook receiver runs, taken from the operator guide.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from _otlp_http import serve_otlp
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from gateway.app import open_gateway
from gateway.demo.runner import DEMO_PORTS, DemoStack, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app

RECEIVER_SCRIPT = Path(__file__).with_name("_webhook_receiver.py")
OPERATOR_GUIDE = Path(__file__).parents[2] / "docs" / "operator-guide.md"
WEBHOOK_SECRET = "test-webhook-secret-0123456789"


@asynccontextmanager
async def audit_demo(var_dir: Path, audit: dict[str, Any]) -> AsyncIterator[DemoStack]:
    """Run the demo stack (dev IdP, backends, gateway) with these audit settings."""
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    config = msgspec.structs.replace(config, stages={**config.stages, "audit": audit})
    apps = demo_peer_apps(config, urls)
    async with AsyncExitStack() as stack:
        for name in ("idp", "employees", "partners"):
            await stack.enter_async_context(run_app(apps[name], sock=sockets[name]))
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(run_app(gateway.asgi, sock=sockets["gateway"]))
        yield DemoStack(
            gateway=gateway,
            config=config,
            urls=urls,
            audit_path=var_dir / "audit.jsonl",
        )


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    sock = bind_socket("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def start_receiver(
    port: int, outfile: Path, *, kill_switch: Path | None = None
) -> subprocess.Popen[str]:
    """Start the webhook receiver process and wait until it listens.

    Once ``kill_switch`` exists, the receiver dies right after recording the
    next POST, without responding.
    """
    args = [sys.executable, str(RECEIVER_SCRIPT), str(port), str(outfile)]
    if kill_switch is not None:
        args.append(str(kill_switch))
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def stop_receiver(process: subprocess.Popen[str]) -> None:
    """Kill a receiver process this test started, by its PID, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(5)
    if process.stdout is not None:
        process.stdout.close()


def received_posts(outfile: Path) -> list[dict[str, Any]]:
    """Return the POSTs the receiver recorded, in arrival order."""
    if not outfile.exists():
        return []
    return [json.loads(line) for line in outfile.read_text().splitlines()]


def documented_function(name: str) -> Callable[..., Any]:
    """Return a function printed in the operator guide, run exactly as written."""
    text = OPERATOR_GUIDE.read_text()
    pattern = rf"```python\n((?:(?!```).)*?def {name}\(.*?)```"
    match = re.search(pattern, text, re.S)
    assert match is not None, f"the operator guide has no {name} example"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(OPERATOR_GUIDE), "exec"), namespace)
    function: Callable[..., Any] = namespace[name]
    return function


def unique_in_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """De-duplicate events by ``id``, keeping each one's first arrival."""
    seen: set[str] = set()
    unique: list[dict[str, Any]] = []
    for event in events:
        if event["id"] not in seen:
            seen.add(event["id"])
            unique.append(event)
    return unique


def jsonl_events(path: Path) -> list[dict[str, Any]]:
    """Return the events of a JSON-lines audit file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@dataclass(frozen=True)
class ExportedLog:
    """One log record as the OTLP receiver decoded it; ids are lower-case hex."""

    event_name: str
    body: str
    attributes: dict[str, Any]
    trace_id: str
    span_id: str
    severity_text: str
    time_unix_nano: int
    service: str
    scope: str


@dataclass
class OtlpLogsReceiver:
    """What the logs receiver got, and how many requests it should still fail."""

    endpoint: str = ""
    logs: list[ExportedLog] = field(default_factory=list)
    requests: int = 0
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _any_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    return None if which is None else getattr(value, which)


def decode_logs(body: bytes) -> list[ExportedLog]:
    """Decode the log records of one ``ExportLogsServiceRequest``."""
    request = ExportLogsServiceRequest.FromString(body)
    logs: list[ExportedLog] = []
    for resource_logs in request.resource_logs:
        resource = {
            a.key: _any_value(a.value) for a in resource_logs.resource.attributes
        }
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                logs.append(
                    ExportedLog(
                        event_name=record.event_name,
                        body=str(_any_value(record.body)),
                        attributes={
                            a.key: _any_value(a.value) for a in record.attributes
                        },
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        severity_text=record.severity_text,
                        time_unix_nano=record.time_unix_nano,
                        service=str(resource.get("service.name")),
                        scope=scope_logs.scope.name,
                    )
                )
    return logs


@contextlib.contextmanager
def otlp_logs_receiver(*, fail_first: int = 0) -> Iterator[OtlpLogsReceiver]:
    """Serve an OTLP/HTTP logs receiver on a free port while the context is open.

    The first ``fail_first`` requests get a 500, which the SDK's exporter does
    not retry itself.
    """
    received = OtlpLogsReceiver(fail_next=fail_first)

    def handle(path: str, body: bytes) -> tuple[int, bytes]:
        if path != "/v1/logs":
            return 404, b""
        with received.lock:
            received.requests += 1
            failing = received.fail_next > 0
            received.fail_next -= 1
            if not failing:
                received.logs.extend(decode_logs(body))
        if failing:
            return 500, b""
        return 200, ExportLogsServiceResponse().SerializeToString()

    with serve_otlp(handle) as url:
        received.endpoint = f"{url}/v1/logs"
        yield received
