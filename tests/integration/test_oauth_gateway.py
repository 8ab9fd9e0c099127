"""The OAuth front door as the assembled gateway serves it: tracing and errors.

The gateway comes from ``open_gateway`` and runs with uvicorn on an ephemeral
loopback port, so requests pass the dispatcher in front of the Litestar app.
No IdP runs: nothing here signs a user in.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from gateway import app as app_module
from gateway.app import open_gateway
from gateway.config import GatewayConfig
from gateway.demo.serve import bind_socket, run_app
from gateway.errors import StoreError
from gateway.events import ClientRegistered, GatewayEvent
from gateway.store import MemoryStore, Store
from pipeline import Event

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
REGISTRATION = {
    "client_name": "cursor",
    "redirect_uris": ["http://127.0.0.1:3000/callback"],
    "token_endpoint_auth_method": "none",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Spans of the dispatcher, through a local SDK provider.

    The global provider can be set only once per process, so the dispatcher's
    tracer is replaced by one of a local provider.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(app_module, "_tracer", provider.get_tracer("test"))
    return exporter


class ClientStoreDown(MemoryStore):
    """A state store whose client records cannot be read or written.

    It is a fake because no real store fails on demand. It stands for an
    outage of a shared store, which reaches the handler of unexpected errors.
    """

    async def get(self, namespace: str, key: str) -> bytes | None:
        if namespace == "client":
            raise StoreError("the state store is unreachable")
        return await super().get(namespace, key)

    async def set(
        self, namespace: str, key: str, value: bytes, ttl: float | None = None
    ) -> None:
        if namespace == "client":
            raise StoreError("the state store is unreachable")
        await super().set(namespace, key, value, ttl)


def closed_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    http: httpx.AsyncClient
    events: list[Event]

    async def events_of(self, kind: type[GatewayEvent]) -> list[Any]:
        await anyio.sleep(0.02)
        return [event for event in self.events if isinstance(event, kind)]


@contextlib.asynccontextmanager
async def running_gateway(
    var_dir: pathlib.Path, store: Store | None = None
) -> AsyncIterator[Running]:
    sock = bind_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = msgspec.convert(
        {
            "server": {"public_url": url, "var_dir": str(var_dir)},
            "upstream": {
                "issuer": f"http://127.0.0.1:{closed_port()}",
                "client_id": "agent-proxy",
                "client_secret": "secret",
            },
            "backends": {
                "employees": {
                    "path": "/employees/mcp",
                    "url": "http://127.0.0.1:1/mcp",
                    "auth": {"kind": "none"},
                    "anonymous": True,
                }
            },
        },
        GatewayConfig,
    )
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    async with open_gateway(config, store=store) as gateway:
        gateway.runtime.bus.subscribe("test", record)
        async with (
            run_app(gateway.asgi, sock=sock),
            httpx.AsyncClient(base_url=url) as http,
        ):
            yield Running(http, events)


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    return span


async def test_registration_event_request_id_matches_response(
    tmp_path: pathlib.Path, exporter: InMemorySpanExporter
) -> None:
    """ClientRegistered carries the response's X-Request-Id and the caller's trace."""
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
    async with running_gateway(tmp_path) as gateway:
        response = await gateway.http.post(
            "/oauth2/register",
            json=REGISTRATION,
            headers={"traceparent": traceparent},
        )
        (registered,) = await gateway.events_of(ClientRegistered)
    assert response.status_code == 201
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    int(request_id, 16)
    assert registered.request_id == request_id
    assert registered.trace_id == TRACE_ID

    span = server_span(exporter)
    assert span.name == "POST /oauth2/register"
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN_ID
    assert registered.span_id == f"{span.context.span_id:016x}"
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == "/oauth2/register"
    assert attributes["http.route"] == "/oauth2/register"
    assert attributes["http.response.status_code"] == 201
    assert attributes["agent_proxy.request_id"] == request_id


async def test_registration_without_traceparent_new_trace(
    tmp_path: pathlib.Path, exporter: InMemorySpanExporter
) -> None:
    """Without a traceparent the request starts a trace that its events name."""
    async with running_gateway(tmp_path) as gateway:
        first = await gateway.http.post("/oauth2/register", json=REGISTRATION)
        second = await gateway.http.post("/oauth2/register", json=REGISTRATION)
        registered = await gateway.events_of(ClientRegistered)
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert [event.request_id for event in registered] == [
        first.headers["x-request-id"],
        second.headers["x-request-id"],
    ]
    spans = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    assert [event.trace_id for event in registered] == [
        f"{span.context.trace_id:032x}" for span in spans
    ]
    assert all(span.parent is None for span in spans)


async def test_path_parameter_route_names_span(
    tmp_path: pathlib.Path, exporter: InMemorySpanExporter
) -> None:
    """A route with a path parameter names the span by its template."""
    async with running_gateway(tmp_path) as gateway:
        response = await gateway.http.get(
            "/.well-known/oauth-protected-resource/employees/mcp"
        )
    assert response.status_code == 200
    span = server_span(exporter)
    route = "/.well-known/oauth-protected-resource/{backend_path}"
    assert span.name == f"GET {route}"
    assert dict(span.attributes or {})["http.route"] == route


@pytest.mark.parametrize(
    ("method", "path", "status", "error", "span_name"),
    [
        ("GET", "/wp-login.php", 404, "not_found", "GET"),
        ("GET", "/oauth2/register", 405, "invalid_request", "GET /oauth2/register"),
        ("PATCH", "/oauth2/token", 405, "invalid_request", "PATCH /oauth2/token"),
    ],
)
async def test_unknown_path_or_method_json_error(
    tmp_path: pathlib.Path,
    exporter: InMemorySpanExporter,
    method: str,
    path: str,
    status: int,
    error: str,
    span_name: str,
) -> None:
    """The assembled app returns RFC 6749 JSON for unknown paths and methods."""
    async with running_gateway(tmp_path) as gateway:
        response = await gateway.http.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error
    assert "status_code" not in response.json()
    span = server_span(exporter)
    assert span.name == span_name
    assert dict(span.attributes or {})["http.response.status_code"] == status
    assert dict(span.attributes or {})["url.path"] == path
    assert "x-request-id" in response.headers


async def test_register_nested_json_through_gateway_rejected(
    tmp_path: pathlib.Path,
) -> None:
    """The assembled gateway returns 400 for deeply nested JSON."""
    async with running_gateway(tmp_path) as gateway:
        response = await gateway.http.post(
            "/oauth2/register",
            content=b"[" * 3000,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


async def test_store_failure_server_error_logged(
    tmp_path: pathlib.Path, exporter: InMemorySpanExporter
) -> None:
    """An unexpected exception becomes server_error, logged with its request id."""
    async with running_gateway(tmp_path, store=ClientStoreDown()) as gateway:
        with capture_logs() as logs:
            response = await gateway.http.post(
                "/oauth2/token",
                data={"grant_type": "refresh_token", "client_id": "abc"},
            )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert body["error"] == "server_error"
    assert request_id in body["error_description"]
    assert "unreachable" not in body["error_description"]
    [entry] = [e for e in logs if e["event"] == "oauth.unhandled_error"]
    assert entry["log_level"] == "error"
    assert entry["exc_info"] is True
    assert entry["request_id"] == request_id
    assert entry["path"] == "/oauth2/token"
    span = server_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert dict(span.attributes or {})["http.response.status_code"] == 500


async def test_store_failure_browser_endpoint_error_page(
    tmp_path: pathlib.Path,
) -> None:
    """An unexpected exception on a browser endpoint shows an HTML error page."""
    async with running_gateway(tmp_path, store=ClientStoreDown()) as gateway:
        with capture_logs():
            response = await gateway.http.get("/oauth2/authorize?client_id=abc")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-request-id"] in response.text
