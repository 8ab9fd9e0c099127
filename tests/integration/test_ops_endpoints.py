"""The operational endpoints of a running gateway: /healthz, /readyz, /metrics.

The gateway runs under uvicorn on loopback with the demo config. For the
readiness failures, the IdP and the backends point at ports that are bound
but not listening, so every connection to them is refused.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.app import open_gateway
from gateway.config import GatewayConfig
from gateway.config.model import HealthConfig, MetricsConfig
from gateway.demo.driver import run_client
from gateway.demo.runner import DEMO_PORTS, demo_config, run_demo
from gateway.demo.serve import bind_socket, run_app

pytestmark = pytest.mark.anyio

METRICS_TOKEN = "metrics-scrape-token-0123456789"


@asynccontextmanager
async def refused_stack(
    tmp_path: Path, **telemetry: Any
) -> AsyncIterator[tuple[str, GatewayConfig]]:
    """A gateway whose IdP and backends refuse connections; yields its URL."""
    sockets: dict[str, socket.socket] = {name: bind_socket() for name in DEMO_PORTS}
    try:
        urls = {
            name: f"http://127.0.0.1:{sock.getsockname()[1]}"
            for name, sock in sockets.items()
        }
        config = demo_config(urls, tmp_path)
        config = msgspec.structs.replace(
            config,
            telemetry=msgspec.structs.replace(config.telemetry, **telemetry),
        )
        async with (
            open_gateway(config) as gateway,
            run_app(gateway.asgi, sock=sockets.pop("gateway")),
        ):
            yield urls["gateway"], config
    finally:
        for sock in sockets.values():
            sock.close()


async def test_ops_healthz_answers_ok(tmp_path: Path) -> None:
    """/healthz is 200 with status ok even when nothing else is reachable."""
    async with refused_stack(tmp_path) as (url, _), httpx.AsyncClient() as http:
        response = await http.get(f"{url}/healthz")
        head = await http.head(f"{url}/healthz")
        post = await http.post(f"{url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"
    assert head.status_code == 200
    assert head.content == b""
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


async def test_ops_readyz_lists_failed_checks(tmp_path: Path) -> None:
    """/readyz is 503 naming each failed check by error class, without messages."""
    async with refused_stack(tmp_path) as (url, _), httpx.AsyncClient() as http:
        response = await http.get(f"{url}/readyz")
        again = await http.get(f"{url}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    checks = body["checks"]
    assert set(checks) == {
        "config",
        "upstream_metadata",
        "upstream_jwks",
        "audit_journal:audit.jsonl.0",
        "backend:employees",
        "backend:partners",
    }
    assert checks["config"]["status"] == "ok"
    assert checks["upstream_metadata"] == {
        "status": "fail",
        "duration_ms": checks["upstream_metadata"]["duration_ms"],
        "error": "UpstreamError",
        "reason": "idp_unavailable",
    }
    assert checks["backend:employees"]["status"] == "fail"
    assert checks["backend:employees"]["error"] == "ConnectError"
    assert "127.0.0.1" not in response.text
    # Within cache_seconds the same report is served again.
    assert again.json()["checked_at"] == body["checked_at"]


async def test_ops_readyz_without_backend_checks(tmp_path: Path) -> None:
    """health.check_backends false leaves the backends out of readiness."""
    health = HealthConfig(check_backends=False, cache_seconds=0)
    async with (
        refused_stack(tmp_path, health=health) as (url, _),
        httpx.AsyncClient() as http,
    ):
        response = await http.get(f"{url}/readyz")
    assert set(response.json()["checks"]) == {
        "config",
        "upstream_metadata",
        "upstream_jwks",
        "audit_journal:audit.jsonl.0",
    }


async def test_ops_readyz_ready_on_demo(tmp_path: Path) -> None:
    """On the running demo every check passes and backends report their status."""
    async with (
        run_demo(ephemeral=True, var_dir=tmp_path) as stack,
        httpx.AsyncClient() as http,
    ):
        response = await http.get(f"{stack.urls['gateway']}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {check["status"] for check in body["checks"].values()} == {"ok"}
    assert body["checks"]["upstream_jwks"]["details"]["keys"] >= 1
    # The employees backend requires a token, so it returns 401.
    assert body["checks"]["backend:employees"]["details"]["http_status"] == 401


async def test_ops_metrics_after_demo_calls(tmp_path: Path) -> None:
    """/metrics shows requests of both backends, exchanges and stage times."""
    async with (
        run_demo(ephemeral=True, var_dir=tmp_path) as stack,
        httpx.AsyncClient() as http,
    ):
        await run_client(
            stack.mcp_url("employees"),
            client_name="cursor",
            calls=[("list_employees", {}), ("list_employees", {})],
        )
        await run_client(
            stack.mcp_url("partners"),
            client_name="cursor",
            calls=[("list_partners", {})],
        )
        await stack.gateway.runtime.bus.drain()
        response = await http.get(f"{stack.urls['gateway']}/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _has_sample(
        text,
        "agent_proxy_requests_total",
        'agent_proxy_backend="employees"',
        'mcp_method_name="tools/call"',
        'agent_proxy_outcome="success"',
    )
    assert _has_sample(
        text, "agent_proxy_requests_total", 'agent_proxy_backend="partners"'
    )
    assert _has_sample(
        text,
        "agent_proxy_exchanges_total",
        'agent_proxy_exchange_cache="miss"',
        'agent_proxy_backend="employees"',
    )
    assert _has_sample(
        text,
        "agent_proxy_exchanges_total",
        'agent_proxy_exchange_cache="hit"',
        'agent_proxy_backend="employees"',
    )
    for stage in ("audit", "authenticate", "exchange", "session", "forward"):
        assert _has_sample(
            text, "agent_proxy_stage_calls_total", f'pipeline_stage="{stage}"'
        ), stage
        assert _has_sample(
            text, "agent_proxy_stage_time_seconds_total", f'pipeline_stage="{stage}"'
        ), stage
    assert _has_sample(
        text,
        "mcp_server_operation_duration_seconds_count",
        'gen_ai_tool_name="list_employees"',
    )
    assert "agent_proxy_sessions_active" in text
    assert _has_sample(
        text, "agent_proxy_audit_journal_pending", 'agent_proxy_sink="audit.jsonl.0"'
    )


async def test_ops_metrics_bearer_token_required(tmp_path: Path) -> None:
    """With metrics.bearer_token set, /metrics needs exactly that token."""
    metrics = MetricsConfig(bearer_token=METRICS_TOKEN)
    async with (
        refused_stack(tmp_path, metrics=metrics) as (url, _),
        httpx.AsyncClient() as http,
    ):
        missing = await http.get(f"{url}/metrics")
        wrong = await http.get(
            f"{url}/metrics", headers={"authorization": "Bearer not-the-token"}
        )
        right = await http.get(
            f"{url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}
        )
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "agent_proxy_sessions_active" in right.text


async def test_ops_endpoints_disabled_are_not_found(tmp_path: Path) -> None:
    """Turned off in config, the endpoints are not served at all."""
    async with (
        refused_stack(
            tmp_path,
            metrics=MetricsConfig(enabled=False),
            health=HealthConfig(enabled=False),
        ) as (url, _),
        httpx.AsyncClient() as http,
    ):
        statuses = [
            (await http.get(f"{url}{path}")).status_code
            for path in ("/metrics", "/healthz", "/readyz")
        ]
    assert statuses == [404, 404, 404]


def _has_sample(text: str, name: str, *labels: str) -> bool:
    return any(
        line.startswith(name + "{") and all(label in line for label in labels)
        for line in text.splitlines()
    )
