"""The gateway's HTTP client spans carry the stable HTTP attribute names.

A client made by :func:`gateway.telemetry.instrument_http_client` calls a
plain ASGI app on 127.0.0.1, and the SDK's in-memory exporter collects the
CLIENT span. The operator guide lists ``url.full``, ``server.address`` and
``http.response.status_code``, and the gateway's own spans use those names,
so the old ``http.url``, ``http.method`` and ``http.status_code`` must not
appear.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _otlp_receiver import installed_provider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from gateway.demo.serve import run_app
from gateway.telemetry import instrument_http_client

pytestmark = pytest.mark.anyio


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_http_client_span_stable_attribute_names() -> None:
    """An instrumented client's span has url.full and no http.url."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with installed_provider(provider):
        async with (
            run_app(plain_app) as app,
            instrument_http_client(httpx.AsyncClient()) as client,
        ):
            response = await client.get(f"{app.url}/keys")
    assert response.status_code == 204
    [span] = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["url.full"] == f"{app.url}/keys"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["http.response.status_code"] == 204
    assert attributes["http.request.method"] == "GET"
    assert "http.url" not in attributes
    assert "http.method" not in attributes
    assert "http.status_code" not in attributes
