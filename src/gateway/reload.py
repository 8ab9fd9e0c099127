"""Reloading the configuration on ``SIGHUP`` and when its file changes.

A reload reads the file and runs every check that start-up and
``agent-proxy check`` run (see :mod:`gateway.config_source`). It builds the
new chains, and only then switches new requests to the new config in one
step. Requests in flight finish with the config they started with. A
config that fails any check is rejected: its errors are logged and published
as :class:`~gateway.events.ConfigRejected`, and the running config keeps
serving.

Settings that apply only at start-up (:data:`gateway.config_changes.
RESTART_ONLY`) keep their running values; the reload applies the rest and
reports those key paths in :class:`~gateway.events.ConfigReloaded`.

A backend whose settings are unchanged keeps its HTTP connection pool, and
keeps its chain too when the chain's stages and their settings are
unchanged. The pools of removed or changed backends are closed once the
requests that started before the switch have ended, or after
``drain_timeout`` seconds. Then the sessions of removed backends end.
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskGroup, TaskStatus

from gateway.app import Gateway
from gateway.chains import BackendChainPlan, plan_backend_chains
from gateway.config import GatewayConfig
from gateway.config.okta_checks import okta_warnings
from gateway.config.yaml_safety import size_problem
from gateway.config_changes import (
    compare_configs,
    keep_restart_only,
    restart_required,
)
from gateway.config_source import ConfigSource
from gateway.draining import RuntimeDrainer
from gateway.errors import ConfigError
from gateway.events import ConfigRejected, ConfigReloaded, ReloadTrigger
from gateway.generation import build_generation, chain_signature
from gateway.redaction import default_redactor
from gateway.runtime import Runtime

__all__ = ["DRAIN_TIMEOUT", "POLL_INTERVAL", "ConfigReloader", "ConfigSource"]

log = structlog.get_logger("gateway.reload")

POLL_INTERVAL = 1.0
"""Seconds between two checks of the config file's modification time, size and
inode."""
DRAIN_TIMEOUT = 300.0
"""Seconds a replaced config's requests may run before its pools are closed."""

_STAGE = "reload"

FileState = tuple[int, int, int] | None
"""A file's modification time (ns), size and inode; None when it is missing."""


@dataclass(frozen=True)
class _Checked:
    """A reloaded config that passed every check, its chains planned."""

    written: GatewayConfig
    effective: GatewayConfig
    plans: dict[str, BackendChainPlan]
    warnings: list[str]
    restart_required: list[str]
    raw: dict[str, Any] | None


@dataclass(frozen=True)
class _Candidate:
    """A reloaded config that passed every check, ready to install."""

    written: GatewayConfig
    generation: Runtime
    chains: dict[str, Any]
    warnings: list[str]
    restart_required: list[str]
    raw: dict[str, Any] | None


class ConfigReloader:
    """Reloads a running gateway's config on ``SIGHUP`` and on file changes.

    Args:
        gateway: The running gateway; its current config is the one the
            process started with.
        source: The config file and its parser.
        poll_interval: Seconds between two checks of the file; 0 turns the
            file watch off, leaving ``SIGHUP`` and :meth:`reload`. A change
            is applied once the file stayed the same for one more interval.
        drain_timeout: Seconds to wait for the requests of a replaced config
            before closing the connection pools that only it used.
    """

    def __init__(
        self,
        gateway: Gateway,
        source: ConfigSource,
        *,
        poll_interval: float = POLL_INTERVAL,
        drain_timeout: float = DRAIN_TIMEOUT,
    ) -> None:
        self._gateway = gateway
        self._source = source
        self._poll_interval = poll_interval
        # Restart-only settings are compared with the config the process
        # started with, so a pending change is reported on every reload.
        self._started = gateway.runtime.config
        plans, _ = plan_backend_chains(self._started)
        self._chains = {name: chain_signature(plan) for name, plan in plans.items()}
        self._sha256: str | None = None
        self._attempted: str | None = None
        self._lock = anyio.Lock()
        self._drainer = RuntimeDrainer(gateway.base, timeout=drain_timeout)
        self._tasks: TaskGroup | None = None

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Reload on ``SIGHUP`` and on file changes until cancelled.

        Start it with ``task_group.start``, which returns once the ``SIGHUP``
        handler is installed. Cancelling it closes the connection pools of
        replaced configs at once.
        """
        file_state = await self._stat()
        try:
            self._sha256 = _digest(await anyio.Path(self._source.path).read_bytes())
        except OSError:
            self._sha256 = None
        self._attempted = self._sha256
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            with anyio.open_signal_receiver(signal.SIGHUP) as signals:
                if self._poll_interval > 0:
                    tasks.start_soon(self._watch, file_state)
                log.info(
                    "config.reload_enabled",
                    path=str(self._source.path),
                    poll_interval=self._poll_interval,
                    config_sha256=self._sha256,
                )
                task_status.started()
                async for _ in signals:
                    await self.reload("sighup")

    async def reload(self, trigger: ReloadTrigger) -> bool:
        """Read, check and install the config file now, as ``SIGHUP`` does.

        Call it only while :meth:`run` runs, whose task group drains the
        replaced config.

        Returns:
            True if the new config now serves, False if it was rejected.

        Raises:
            RuntimeError: :meth:`run` has not started.
        """
        if self._tasks is None:
            msg = "ConfigReloader.reload() needs run() to be running"
            raise RuntimeError(msg)
        async with self._lock:
            data = await self._read(trigger)
            if data is None:
                return False
            return await self._apply(trigger, data)

    async def _reload_if_changed(self) -> None:
        async with self._lock:
            data = await self._read("file_change")
            if data is None or _digest(data) == self._attempted:
                return
            await self._apply("file_change", data)

    async def _read(self, trigger: ReloadTrigger) -> bytes | None:
        path = anyio.Path(self._source.path)
        try:
            problem = size_problem(str(self._source.path), (await path.stat()).st_size)
            if problem is not None:
                await self._reject(trigger, None, [problem])
                return None
            return await path.read_bytes()
        except OSError as exc:
            problem = (
                f"{self._source.path}: cannot read config file: {exc.strerror or exc}"
            )
            await self._reject(trigger, None, [problem])
            return None

    async def _apply(self, trigger: ReloadTrigger, data: bytes) -> bool:
        sha256 = _digest(data)
        self._attempted = sha256
        try:
            # Parsing and checking a file can take a while: the worker thread
            # leaves the event loop serving requests meanwhile.
            checked = await anyio.to_thread.run_sync(self._check, data)
            candidate = self._build(checked)
        except ConfigError as exc:
            await self._reject(trigger, sha256, exc.problems)
            return False
        except Exception as exc:
            # A custom stage's constructor can fail in any way; the running
            # config must keep serving.
            log.exception("config.build_failed", source=trigger)
            problem = (
                f"building the new chains failed: {type(exc).__name__}: {exc}; "
                "the gateway log has the traceback under config.build_failed"
            )
            await self._reject(trigger, sha256, [problem])
            return False
        await self._install(trigger, sha256, candidate)
        return True

    def _check(self, data: bytes) -> _Checked:
        """Check a file and plan its chains; raises ConfigError with every problem.

        Runs in a worker thread: it only parses, validates and plans, and
        builds no stage.
        """
        written, raw = self._source.load(data)
        effective = keep_restart_only(self._started, written)
        plans, warnings = plan_backend_chains(effective)
        return _Checked(
            written=written,
            effective=effective,
            plans=plans,
            warnings=warnings,
            restart_required=restart_required(self._started, written),
            raw=raw,
        )

    def _build(self, checked: _Checked) -> _Candidate:
        """Build the runtime of a checked file, on the event loop."""
        chains = {name: chain_signature(plan) for name, plan in checked.plans.items()}
        unchanged = [
            name
            for name, signature in chains.items()
            if self._chains.get(name) == signature
        ]
        generation = build_generation(
            self._gateway.base,
            checked.effective,
            checked.plans,
            previous=self._gateway.runtime,
            keep_chains=unchanged,
        )
        return _Candidate(
            written=checked.written,
            generation=generation,
            chains=chains,
            warnings=checked.warnings,
            restart_required=checked.restart_required,
            raw=checked.raw,
        )

    async def _install(
        self, trigger: ReloadTrigger, sha256: str, candidate: _Candidate
    ) -> None:
        gateway = self._gateway
        replaced = gateway.runtime
        generation = candidate.generation
        changes = compare_configs(
            replaced.config,
            generation.config,
            old_chains=self._chains,
            new_chains=candidate.chains,
            restart_required=candidate.restart_required,
        )
        gateway.install(generation)
        gateway.observability.follow(gateway.base)
        previous_sha256 = self._sha256
        self._sha256 = sha256
        self._chains = candidate.chains
        assert self._tasks is not None
        self._drainer.retire(
            self._tasks, replaced, generation, changes.backends_removed
        )

        for warning in candidate.warnings:
            log.warning("config.warning", detail=warning)
        for okta_warning in okta_warnings(candidate.written, candidate.raw):
            log.warning(
                "config.warning",
                code=okta_warning.code,
                key=okta_warning.path,
                detail=okta_warning.message,
            )
        fields = changes.as_fields()
        log.info(
            "config.reloaded",
            source=trigger,
            config_sha256=sha256,
            previous_config_sha256=previous_sha256,
            **fields,
        )
        if changes.restart_required:
            log.warning(
                "config.restart_required",
                keys=changes.restart_required,
                detail="these settings keep their running values until the "
                "gateway restarts",
            )
        await gateway.base.publish(
            ConfigReloaded(
                stage=_STAGE,
                source=trigger,
                config_sha256=sha256,
                previous_config_sha256=previous_sha256,
                backends_added=changes.backends_added,
                backends_removed=changes.backends_removed,
                backends_changed=changes.backends_changed,
                chains_changed=changes.chains_changed,
                agents_changed=changes.agents_changed,
                changed=changes.changed,
                restart_required=changes.restart_required,
            )
        )

    async def _reject(
        self, trigger: ReloadTrigger, sha256: str | None, problems: list[str]
    ) -> None:
        errors = [default_redactor.scrub_text(problem) for problem in problems]
        log.error(
            "config.rejected",
            source=trigger,
            path=str(self._source.path),
            config_sha256=sha256,
            errors=errors,
            detail="the running config keeps serving",
        )
        await self._gateway.base.publish(
            ConfigRejected(
                stage=_STAGE,
                outcome="error",
                reason="invalid_config",
                source=trigger,
                config_sha256=sha256,
                current_config_sha256=self._sha256,
                errors=errors,
            )
        )

    async def _watch(self, seen: FileState) -> None:
        while True:
            await anyio.sleep(self._poll_interval)
            state = await self._stat()
            if state == seen:
                continue
            # Wait until the file stops changing, so that a file being
            # written is not read half-way.
            while True:
                await anyio.sleep(self._poll_interval)
                settled = await self._stat()
                if settled == state:
                    break
                state = settled
            seen = state
            await self._reload_if_changed()

    async def _stat(self) -> FileState:
        try:
            result = await anyio.Path(self._source.path).stat()
        except OSError:
            return None
        return (result.st_mtime_ns, result.st_size, result.st_ino)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
