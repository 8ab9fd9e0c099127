"""Wiring metrics, health checks and the canonical log line into a gateway.

:func:`gateway.app.open_gateway` builds one :class:`Observability` once the
backends' chains exist, starts it in its task group and closes it on
shutdown.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import anyio
import httpx
from anyio.abc import TaskGroup

from gateway.health import Check, ReadinessChecker, gateway_checks
from gateway.metrics import GatewayMetrics
from gateway.metrics_setup import build_gateway_metrics
from gateway.ops import OpsEndpoints
from gateway.redaction import config_secrets, default_redactor
from gateway.request_log import subscribe_request_log
from gateway.runtime import Runtime
from gateway.sessions import NAMESPACE as SESSION_NAMESPACE

SESSION_REFRESH_SECONDS = 15.0
"""Seconds between two reads of the session count while metrics go to OTLP."""


@dataclass
class Observability:
    """A gateway's metrics, readiness checks and operational endpoints.

    Attributes:
        metrics: The metrics, or None when they are off.
        readiness: The readiness checks, or None when health is off.
        ops: The ASGI endpoints ``/healthz``, ``/readyz`` and ``/metrics``.
    """

    metrics: GatewayMetrics | None
    readiness: ReadinessChecker | None
    ops: OpsEndpoints
    _health_http: httpx.AsyncClient | None

    @classmethod
    def build(cls, runtime: Runtime) -> Observability:
        """Subscribe the log line and the metrics to the bus, time every chain.

        Also registers the config's secrets with the log redactor, so that no
        log line shows them.
        """
        config = runtime.config
        telemetry = config.telemetry
        default_redactor.add_secrets(config_secrets(config))
        subscribe_request_log(runtime.bus)
        metrics = build_gateway_metrics(
            telemetry,
            bus=runtime.bus,
            count_sessions=functools.partial(runtime.store.count, SESSION_NAMESPACE),
        )
        if metrics is not None:
            metrics.subscribe(runtime.bus)
            for name, backend in runtime.backends.items():
                backend.chain.stage_timer = metrics.stage_timer(name)
        readiness = None
        health_http = None
        if telemetry.health.enabled:
            # A client of its own: backend checks carry no credentials and are
            # not traced, and a slow check cannot hold a pooled connection
            # that requests need.
            health_http = httpx.AsyncClient(
                timeout=telemetry.health.timeout, follow_redirects=False
            )
            readiness = ReadinessChecker(
                _readiness_checks(runtime, health_http),
                timeout=telemetry.health.timeout,
                cache_seconds=telemetry.health.cache_seconds,
            )
        ops = OpsEndpoints(
            readiness=readiness,
            metrics=metrics,
            metrics_token=telemetry.metrics.bearer_token,
        )
        return cls(metrics, readiness, ops, health_http)

    def follow(self, runtime: Runtime) -> None:
        """Time the new chains and check the backends of a reloaded config.

        A chain kept from the previous config keeps its timer.
        """
        if self.metrics is not None:
            for name, backend in runtime.backends.items():
                if backend.chain.stage_timer is None:
                    backend.chain.stage_timer = self.metrics.stage_timer(name)
        if self.readiness is not None and self._health_http is not None:
            self.readiness.checks = _readiness_checks(runtime, self._health_http)

    def start(self, task_group: TaskGroup) -> None:
        """Start reading the session count periodically when metrics go to OTLP.

        The Prometheus endpoint reads it on each scrape instead.
        """
        if self.metrics is not None and self.metrics.otlp_endpoint is not None:
            task_group.start_soon(self.metrics.refresh_forever, SESSION_REFRESH_SECONDS)

    async def aclose(self) -> None:
        """Export the last metrics and close the health checks' HTTP client."""
        if self.metrics is not None:
            # A final OTLP export can wait for the exporter's timeout.
            await anyio.to_thread.run_sync(self.metrics.shutdown)
        if self._health_http is not None:
            await self._health_http.aclose()


def _readiness_checks(runtime: Runtime, http: httpx.AsyncClient) -> dict[str, Check]:
    checks = gateway_checks(runtime, http)
    if runtime.config.telemetry.health.check_backends:
        return checks
    return {
        name: check for name, check in checks.items() if not name.startswith("backend:")
    }
