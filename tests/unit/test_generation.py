"""Runtimes per config: what a reload shares, keeps, replaces and pins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from gateway.app import open_gateway
from gateway.chains import plan_backend_chains
from gateway.config import GatewayConfig, load_config_text
from gateway.demo.runner import DEMO_PORTS, demo_config
from gateway.generation import build_generation
from gateway.runtime import ActiveRequests

pytestmark = pytest.mark.anyio

URLS = {name: f"http://127.0.0.1:{port}" for name, port in DEMO_PORTS.items()}


def moved_partners(config: GatewayConfig) -> GatewayConfig:
    """Return ``config`` with the partners backend at another URL."""
    tree: dict[str, Any] = msgspec.to_builtins(config)
    tree["backends"]["partners"]["url"] = "http://127.0.0.1:8003/mcp"
    return load_config_text(msgspec.json.encode(tree).decode())


async def test_generation_install_pins_previous_runtime(tmp_path: Path) -> None:
    """Installing a config leaves the previous runtime as requests saw it."""
    config = demo_config(URLS, tmp_path)
    new = moved_partners(config)
    plans, _ = plan_backend_chains(new)
    async with open_gateway(config) as gateway:
        first = gateway.runtime
        second = build_generation(
            gateway.base, new, plans, previous=first, keep_chains=["employees"]
        )
        gateway.install(second)

        assert gateway.runtime is second
        assert gateway.asgi.mcp.runtime is second
        assert gateway.asgi.app.state.runtime is second
        assert gateway.base.config is new
        assert gateway.base.backends is second.backends
        assert gateway.base.credentials.config is new
        assert first.config is config
        assert first.credentials.config is config
        assert first.backends["partners"].config.url == config.backends["partners"].url
        await first.backends["partners"].client.aclose()


async def test_generation_shares_services_keeps_unchanged_backends(
    tmp_path: Path,
) -> None:
    """Services and unchanged pools are shared; a moved backend gets a new pool."""
    config = demo_config(URLS, tmp_path)
    new = moved_partners(config)
    plans, _ = plan_backend_chains(new)
    async with open_gateway(config) as gateway:
        first = gateway.runtime
        kept = build_generation(
            gateway.base, new, plans, previous=first, keep_chains=["employees"]
        )
        rebuilt = build_generation(gateway.base, new, plans, previous=first)

        assert kept.store is first.store
        assert kept.bus is first.bus
        assert kept.credentials is not first.credentials
        assert kept.credentials.cache is first.credentials.cache
        employees = first.backends["employees"]
        assert kept.backends["employees"].client is employees.client
        assert kept.backends["employees"].chain is employees.chain
        assert rebuilt.backends["employees"].client is employees.client
        assert rebuilt.backends["employees"].chain is not employees.chain
        assert kept.backends["partners"].client is not first.backends["partners"].client
        assert kept.by_path == {
            "/employees/mcp": "employees",
            "/partners/mcp": "partners",
        }
        await kept.backends["partners"].client.aclose()
        await rebuilt.backends["partners"].client.aclose()


async def test_active_requests_wait_idle_returns_at_zero() -> None:
    """Waiting for no request in flight returns only after the last one ends."""
    active = ActiveRequests()
    active.enter()
    active.enter()
    idle = anyio.Event()

    async def wait() -> None:
        await active.wait_idle()
        idle.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.sleep(0.01)
            active.leave()
            await anyio.sleep(0.01)
            assert not idle.is_set()
            active.leave()
            await idle.wait()
    assert active.count == 0


async def test_observability_follow_times_and_checks_new_backends(
    tmp_path: Path,
) -> None:
    """After a switch, a new backend is timed and checked for readiness."""
    config = demo_config(URLS, tmp_path)
    tree: dict[str, Any] = msgspec.to_builtins(config)
    tree["backends"]["extra"] = {"path": "/extra/mcp", "url": URLS["partners"]}
    new = load_config_text(msgspec.json.encode(tree).decode())
    plans, _ = plan_backend_chains(new)
    async with open_gateway(config) as gateway:
        first = gateway.runtime
        second = build_generation(
            gateway.base, new, plans, previous=first, keep_chains=["employees"]
        )
        gateway.install(second)
        gateway.observability.follow(gateway.base)

        readiness = gateway.observability.readiness
        assert readiness is not None
        assert "backend:extra" in readiness.checks
        assert second.backends["extra"].chain.stage_timer is not None
        employees = second.backends["employees"]
        assert (
            employees.chain.stage_timer is first.backends["employees"].chain.stage_timer
        )
        await second.backends["extra"].client.aclose()
