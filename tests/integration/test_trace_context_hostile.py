"""Malformed W3C trace context headers get the normal answer and bounded logs.

A client, authenticated or not, can send any ``traceparent``, ``tracestate``
and ``baggage`` header. The OpenTelemetry propagators log a warning for each
malformed one. Each request here must still get its usual JSON-RPC answer
with an ``X-Request-Id``, one ``request.completed`` line, an ending audit
event, no traceback in the logs, and a bounded log volume. A malformed
``traceparent`` starts a new trace. A malformed ``tracestate`` or
``baggage`` next to a valid ``traceparent`` is dropped, and the request
continues the client's trace, as W3C Trace Context asks.

The stack is the demo's (dev IdP, demo backends, gateway) on ephemeral
ports, with the production JSON logging set-up and an SDK tracer provider
that records nothing, so that spans have ids.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _case_support import MCP_HEADERS, bearer, sign_in
from _otlp_receiver import installed_provider
from _transport_harness import initialize_body
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from gateway.demo.runner import DemoStack, run_demo
from gateway.logging_setup import configure_logging, unconfigure_logging

pytestmark = pytest.mark.anyio

CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-b7ad6b7169203331-01"
MAX_LOG_BYTES_PER_REQUEST = 4096
"""Upper bound on the log output of one request; a normal one writes ~1 KB."""

HOSTILE_HEADERS: dict[str, dict[str, bytes]] = {
    "tracestate_uppercase_key": {"tracestate": b"Vendor=1"},
    "tracestate_non_ascii": {"tracestate": "k=v\u00e9".encode()},
    "tracestate_space_in_key": {"tracestate": b"a=b,BAD KEY=1"},
    "tracestate_40_entries": {
        "tracestate": ",".join(f"k{i}=v" for i in range(40)).encode()
    },
    "tracestate_over_8192_chars": {
        "tracestate": ",".join(f"k{i}={'v' * 256}" for i in range(32)).encode()
    },
    "traceparent_over_512_chars": {"traceparent": (TRACEPARENT + "x" * 600).encode()},
    "baggage_over_8192_chars": {"baggage": ("k=" + "v" * 9000).encode()},
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def recording_provider() -> Iterator[TracerProvider]:
    with installed_provider(TracerProvider(sampler=ALWAYS_OFF)) as provider:
        yield provider


@pytest.fixture(scope="module")
async def hostile_stack(
    anyio_backend: str,
    recording_provider: TracerProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[DemoStack, str, Path]]:
    var_dir = tmp_path_factory.mktemp("hostile")
    async with run_demo(ephemeral=True, var_dir=var_dir) as stack:
        storage = await sign_in(stack, "employees")
        assert storage.tokens is not None
        yield stack, storage.tokens.access_token, var_dir / "audit.jsonl"


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    configure_logging(json=True, level="INFO", cache_loggers=False)
    capsys.readouterr()
    try:
        yield lambda: capsys.readouterr().err
    finally:
        unconfigure_logging()


async def audit_event(path: Path, request_id: str) -> dict[str, Any]:
    """Return the ending audit event of a request, waiting up to 5 s for it."""
    with anyio.fail_after(5):
        while True:
            if path.exists():
                for line in path.read_text().splitlines():
                    event = json.loads(line)
                    if event.get("request_id") == request_id and event["type"] in (
                        "ResponseCompleted",
                        "RequestRejected",
                    ):
                        return event
            await anyio.sleep(0.05)


def parse_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
async def test_trace_context_hostile_header_normal_answer(
    hostile_stack: tuple[DemoStack, str, Path],
    json_logs: Callable[[], str],
    case: str,
) -> None:
    """POST and GET with a malformed context header answer as without it."""
    stack, token, audit_path = hostile_stack
    url = stack.mcp_url("employees")
    hostile = HOSTILE_HEADERS[case]
    extra: dict[str, bytes] = {"traceparent": TRACEPARENT.encode(), **hostile}
    requests = [
        ("POST", bearer(token), 200),
        ("POST", dict(MCP_HEADERS), 401),
        ("GET", {"accept": "text/event-stream"}, 401),
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for method, headers, expected in requests:
            all_headers = [(k, v.encode()) for k, v in headers.items()]
            all_headers += list(extra.items())
            body = initialize_body(1) if method == "POST" else None
            response = await http.request(method, url, headers=all_headers, json=body)
            label = f"{case} {method} {expected}"
            assert response.status_code == expected, (label, response.text[:300])
            assert response.headers["content-type"].startswith(
                ("application/json", "text/event-stream")
            ), label
            if response.headers["content-type"].startswith("application/json"):
                message = response.json()
                assert message["jsonrpc"] == "2.0", label
            request_id = response.headers.get("x-request-id")
            assert request_id, label

            event = await audit_event(audit_path, request_id)
            logs = json_logs()
            assert "Traceback" not in logs, label
            assert "RecursionError" not in logs, label
            assert len(logs.encode()) <= MAX_LOG_BYTES_PER_REQUEST, (label, len(logs))
            completed = [
                line
                for line in parse_lines(logs)
                if line.get("event") == "request.completed"
                and line.get("request_id") == request_id
            ]
            assert len(completed) == 1, (label, logs[:2000])
            trace_id = event["trace_id"]
            assert isinstance(trace_id, str), label
            assert len(trace_id) == 32, label
            assert trace_id != "0" * 32, label
            assert completed[0]["trace_id"] == trace_id, label
            if "traceparent" in hostile:
                assert trace_id != CLIENT_TRACE_ID, label
            else:
                assert trace_id == CLIENT_TRACE_ID, label
