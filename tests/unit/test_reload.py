"""ConfigReloader in this process: results, events and failures of a reload.

The gateway is built with :func:`gateway.app.open_gateway` and serves no
request, so no peer runs; the subprocess tests in
``tests/integration/test_config_reload.py`` cover requests under load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import anyio
import msgspec
import pytest
import yaml

from gateway.app import Gateway, open_gateway
from gateway.demo.runner import DEMO_PORTS, demo_config
from gateway.events import ConfigRejected, ConfigReloaded
from gateway.reload import ConfigReloader, ConfigSource
from pipeline import BaseStage, Event, Next

pytestmark = pytest.mark.anyio

URLS = {name: f"http://127.0.0.1:{port}" for name, port in DEMO_PORTS.items()}
EXPLODING = "tests.unit.test_reload:ExplodingStage"


class ExplodingStage(BaseStage[Any, Any]):
    """A custom stage whose constructor fails, as a buggy plug-in's may."""

    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, name: str, config: Any, resources: Any) -> None:
        msg = "boom"
        raise RuntimeError(msg)

    async def handle(self, ctx: Any, call_next: Next[Any, Any]) -> Any:
        return await call_next(ctx)


@dataclass
class Reloading:
    """A gateway, its config file, its reloader and the events it published."""

    gateway: Gateway
    path: Path
    reloader: ConfigReloader
    config: dict[str, Any]
    events: list[Event] = field(default_factory=list)

    def write(self, config: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(config), encoding="utf-8")

    async def published(self, kind: type[Event]) -> list[Any]:
        await self.gateway.base.bus.drain(timeout=2.0)
        await anyio.sleep(0.01)
        return [event for event in self.events if isinstance(event, kind)]


@asynccontextmanager
async def reloading(tmp_path: Path) -> AsyncIterator[Reloading]:
    """Run a gateway with a reloader whose file watch is off."""
    config = demo_config(URLS, tmp_path / "var")
    tree: dict[str, Any] = msgspec.to_builtins(config)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    async with open_gateway(config) as gateway:
        reloader = ConfigReloader(gateway, ConfigSource.file(path), poll_interval=0)
        state = Reloading(gateway, path, reloader, tree)

        async def record(event: Event) -> None:
            state.events.append(event)

        gateway.base.bus.subscribe("test", record)
        async with anyio.create_task_group() as group:
            await group.start(reloader.run)
            yield state
            group.cancel_scope.cancel()


async def test_reload_unchanged_file_reports_no_change(tmp_path: Path) -> None:
    """Reloading the same file installs it again and lists no change."""
    async with reloading(tmp_path) as state:
        first = state.gateway.runtime
        assert await state.reloader.reload("sighup")
        (reloaded,) = await state.published(ConfigReloaded)
        assert state.gateway.runtime is not first

    assert reloaded.config_sha256 == reloaded.previous_config_sha256
    assert reloaded.changed == []
    assert reloaded.chains_changed == []
    assert reloaded.stage == "reload"


async def test_reload_failing_stage_constructor_rejected(tmp_path: Path) -> None:
    """A custom stage that raises when built rejects the file, not the gateway."""
    async with reloading(tmp_path) as state:
        first = state.gateway.runtime
        changed = {**state.config, "pipeline": [EXPLODING, *state.config["pipeline"]]}
        state.write(changed)
        assert not await state.reloader.reload("sighup")
        (rejected,) = await state.published(ConfigRejected)
        assert state.gateway.runtime is first

    (error,) = rejected.errors
    assert error == (
        f"pipeline[0]: stage {EXPLODING!r} failed to start: RuntimeError: boom"
    )
    assert rejected.outcome == "error"
    assert rejected.reason == "invalid_config"
    assert rejected.current_config_sha256 is not None


async def test_reload_missing_file_rejected(tmp_path: Path) -> None:
    """A config file that cannot be read is rejected with no hash."""
    async with reloading(tmp_path) as state:
        state.path.unlink()
        assert not await state.reloader.reload("sighup")
        (rejected,) = await state.published(ConfigRejected)

    (error,) = rejected.errors
    assert "cannot read config file" in error
    assert rejected.config_sha256 is None


async def test_reload_before_run_raises(tmp_path: Path) -> None:
    """reload() outside run() has no task group to drain in."""
    config = demo_config(URLS, tmp_path / "var")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(msgspec.to_builtins(config)), encoding="utf-8")
    async with open_gateway(config) as gateway:
        reloader = ConfigReloader(gateway, ConfigSource.file(path))
        with pytest.raises(RuntimeError, match="needs run"):
            await reloader.reload("sighup")
