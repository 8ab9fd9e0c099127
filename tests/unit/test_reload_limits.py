"""ConfigReloader with hostile or unusual files: size, aliases, values, restarts.

The gateway runs in this process (see :func:`tests.unit.test_reload.reloading`);
the tests that need requests serve its ASGI app over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml

from gateway.config.yaml_safety import MAX_CONFIG_BYTES
from gateway.demo.serve import bind_socket, serve_app
from gateway.events import ConfigRejected, ConfigReloaded
from tests.unit.test_reload import Reloading, reloading

pytestmark = pytest.mark.anyio

SECRET_NUMBER = 98765432109876


def alias_bomb(levels: int) -> str:
    """Return YAML whose last list expands to 9 ** (levels + 1) strings."""
    text = "bomb_a: &a [x, x, x, x, x, x, x, x, x]\n"
    for level in range(levels):
        name, previous = chr(98 + level), chr(97 + level)
        items = ", ".join([f"*{previous}"] * 9)
        text += f"bomb_{name}: &{name} [{items}]\n"
    return text


@asynccontextmanager
async def served(state: Reloading) -> AsyncIterator[str]:
    """Serve the gateway over HTTP; yields its base URL."""
    sock = bind_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ready = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: serve_app(state.gateway.asgi, sock=sock, ready=ready))
        await ready.wait()
        yield url
        group.cancel_scope.cancel()
    sock.close()


async def reload_while_probing(
    state: Reloading, text: str
) -> tuple[float, list[float]]:
    """Reload ``text`` while requests run; returns the reload time and latencies."""
    latencies: list[float] = []
    async with served(state) as url, httpx2.AsyncClient() as client:
        probe = f"{url}/.well-known/oauth-protected-resource/partners/mcp"
        assert (await client.get(probe)).status_code == 200
        done = anyio.Event()

        async def prober() -> None:
            while not done.is_set():
                started = time.monotonic()
                response = await client.get(probe)
                assert response.status_code == 200
                latencies.append(time.monotonic() - started)
                await anyio.sleep(0.01)

        state.path.write_text(text, encoding="utf-8")
        async with anyio.create_task_group() as group:
            group.start_soon(prober)
            await anyio.sleep(0.1)
            count_before = len(latencies)
            started = time.monotonic()
            with anyio.fail_after(60):
                await state.reloader.reload("sighup")
            took = time.monotonic() - started
            done.set()
        return took, latencies[count_before:]


async def test_reload_large_file_parsed_off_event_loop(tmp_path: Path) -> None:
    """A slow-to-parse file leaves requests answered promptly during the reload."""
    async with reloading(tmp_path) as state:
        big_list = ", ".join(["1"] * 90_000)
        text = yaml.safe_dump(state.config) + f"x_big: [{big_list}]\n"
        took, latencies = await reload_while_probing(state, text)
        (rejected,) = await state.published(ConfigRejected)

    assert "x_big" in rejected.errors[0]
    # Parsing in the event loop answered no request until the reload ended.
    assert took > 0.3, "the file parses too fast to show a stall"
    assert len(latencies) >= 3
    assert max(latencies) < took / 2


async def test_reload_yaml_alias_bomb_rejected_quickly(tmp_path: Path) -> None:
    """Aliases expanding to 9**9 values are refused at once, memory unharmed."""
    async with reloading(tmp_path) as state:
        first = state.gateway.runtime
        state.path.write_text(
            yaml.safe_dump(state.config) + alias_bomb(8), encoding="utf-8"
        )
        started = time.monotonic()
        with anyio.fail_after(10):
            assert not await state.reloader.reload("sighup")
        took = time.monotonic() - started
        (rejected,) = await state.published(ConfigRejected)
        assert state.gateway.runtime is first

    assert took < 5
    (error,) = rejected.errors
    assert "invalid YAML" in error
    assert "more than 100000 values" in error


async def test_reload_oversized_file_rejected_unread(tmp_path: Path) -> None:
    """A file over 1 MiB is rejected with the limit, before it is read."""
    async with reloading(tmp_path) as state:
        padding = "#" + "x" * MAX_CONFIG_BYTES + "\n"
        state.path.write_text(yaml.safe_dump(state.config) + padding, encoding="utf-8")
        assert not await state.reloader.reload("sighup")
        (rejected,) = await state.published(ConfigRejected)

    (error,) = rejected.errors
    assert f"the limit is {MAX_CONFIG_BYTES} bytes" in error
    assert rejected.config_sha256 is None


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("backends", "partners", "auth", "value"), SECRET_NUMBER),
        (("upstream", "client_secret"), [f"{SECRET_NUMBER}"]),
        (("backends", "partners", "protocol"), f"s{SECRET_NUMBER}"),
    ],
)
async def test_reload_wrong_type_value_not_in_rejection(
    tmp_path: Path, where: tuple[str, ...], value: Any
) -> None:
    """A value of the wrong type is named by key path only, never shown."""
    async with reloading(tmp_path) as state:
        node = state.config
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
        state.write(state.config)
        assert not await state.reloader.reload("sighup")
        (rejected,) = await state.published(ConfigRejected)

    (error,) = rejected.errors
    assert error.startswith(".".join(where) + ": ")
    assert str(SECRET_NUMBER) not in error


async def test_reload_audit_sink_change_keeps_chains(tmp_path: Path) -> None:
    """A change to the audit sinks alone waits for a restart and rebuilds nothing."""
    async with reloading(tmp_path) as state:
        chains = {
            name: backend.chain
            for name, backend in state.gateway.runtime.backends.items()
        }
        state.config["stages"]["audit"]["sinks"][0]["max_bytes"] = 5_000_000
        state.write(state.config)
        assert await state.reloader.reload("sighup")
        (reloaded,) = await state.published(ConfigReloaded)
        kept = {
            name: backend.chain
            for name, backend in state.gateway.runtime.backends.items()
        }

    assert reloaded.restart_required == ["stages.audit.sinks"]
    assert reloaded.changed == []
    assert reloaded.chains_changed == []
    assert all(kept[name] is chain for name, chain in chains.items())
