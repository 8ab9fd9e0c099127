"""Liveness and readiness: what ``/healthz`` and ``/readyz`` report.

Liveness needs nothing: a process that serves the request is alive. Readiness runs a
set of named checks, each bounded by a short timeout, and keeps the report
for a few seconds, so that probes from several load balancers cost one run of
the checks rather than one per probe. Checks of the default set
(:func:`gateway_checks`):

- ``config``: the configuration was loaded and the chains were built.
- ``upstream_metadata``: the upstream IdP's discovery document is cached, or
  can be fetched now.
- ``upstream_jwks``: the IdP's key set is cached with at least one key, or
  can be fetched now.
- ``audit_journal:<subscriber>``: the audit sink's journal has space. A
  full journal contains ``journal_max_pending`` undelivered events and makes
  every request that publishes an event wait. The check then fails with
  reason ``audit_journal_full`` until the sink catches up.
- ``backend:<name>``: the backend's MCP URL answers an HTTP ``HEAD`` with any
  status. A backend that requires a token answers 401 and counts as
  reachable; only a connection failure or a timeout fails the check.

A failed check reports the exception's class name and, for the gateway's own
errors, their stable ``reason`` code; never the message, which can contain
URLs and response text.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import structlog

from pipeline import utc_now

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.health")

Check = Callable[[], Awaitable[Mapping[str, Any] | None]]
"""A readiness check: returns details to report, or raises when it fails."""


class CheckResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The result of one readiness check.

    Attributes:
        status: ``ok`` or ``fail``.
        duration_ms: How long the check took.
        error: For a failure: the exception class name, or ``timeout``.
        reason: For a failure: the gateway's stable reason code, when the
            error carries one.
        details: What a passing check observed, such as an HTTP status.
    """

    status: str
    duration_ms: float
    error: str | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None


class ReadinessReport(msgspec.Struct, frozen=True, kw_only=True):
    """The body of ``/readyz``.

    Attributes:
        status: ``ok`` when every check passed, ``fail`` otherwise.
        checked_at: When the checks ran, RFC 3339 in UTC.
        checks: The result of each check, by name.
    """

    status: str
    checked_at: str
    checks: dict[str, CheckResult]

    @property
    def ready(self) -> bool:
        """Whether every check passed."""
        return self.status == "ok"


@dataclass
class _Cached:
    report: ReadinessReport
    at: float


class ReadinessChecker:
    """Runs readiness checks and caches the report.

    Args:
        checks: The checks by name, run concurrently.
        timeout: Seconds each check may take before it fails with ``timeout``.
        cache_seconds: Seconds a report is reused. Concurrent callers wait
            for one run instead of starting their own.
    """

    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        timeout: float = 2.0,
        cache_seconds: float = 5.0,
    ) -> None:
        self.checks = dict(checks)
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._cached: _Cached | None = None
        self._lock = anyio.Lock()

    async def report(self) -> ReadinessReport:
        """Return a report at most ``cache_seconds`` old; run the checks if needed."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached.at < self.cache_seconds:
            return cached.report
        async with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached.at < self.cache_seconds:
                return cached.report
            report = await self._run()
            self._cached = _Cached(report, time.monotonic())
            return report

    async def _run(self) -> ReadinessReport:
        results: dict[str, CheckResult] = {}

        async def run_one(name: str, check: Check) -> None:
            results[name] = await self._run_check(name, check)

        async with anyio.create_task_group() as group:
            for name, check in self.checks.items():
                group.start_soon(run_one, name, check)
        ordered = {name: results[name] for name in self.checks}
        failed = [name for name, result in ordered.items() if result.status != "ok"]
        if failed:
            log.warning("health.not_ready", failed=failed)
        return ReadinessReport(
            status="fail" if failed else "ok", checked_at=utc_now(), checks=ordered
        )

    async def _run_check(self, name: str, check: Check) -> CheckResult:
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            with anyio.fail_after(self.timeout):
                details = await check()
        except TimeoutError:
            return CheckResult(status="fail", duration_ms=elapsed(), error="timeout")
        except Exception as exc:
            reason = getattr(exc, "reason", None)
            return CheckResult(
                status="fail",
                duration_ms=elapsed(),
                error=type(exc).__name__,
                reason=reason if isinstance(reason, str) else None,
            )
        return CheckResult(
            status="ok",
            duration_ms=elapsed(),
            details=dict(details) if details else None,
        )


def gateway_checks(runtime: Runtime, http: httpx.AsyncClient) -> dict[str, Check]:
    """Return the default readiness checks of a running gateway.

    Args:
        runtime: The gateway's services.
        http: The client for backend checks; it should not follow redirects.
    """
    checks: dict[str, Check] = {"config": _config_check(runtime)}
    checks["upstream_metadata"] = _metadata_check(runtime)
    checks["upstream_jwks"] = _jwks_check(runtime)
    for subscriber in runtime.bus.pending():
        checks[f"audit_journal:{subscriber}"] = _journal_check(runtime, subscriber)
    for name, backend in sorted(runtime.backends.items()):
        checks[f"backend:{name}"] = _backend_check(http, backend.config.url)
    return checks


def _journal_check(runtime: Runtime, subscriber: str) -> Check:
    async def check() -> Mapping[str, Any]:
        if subscriber in runtime.bus.full_journals():
            msg = f"the journal of {subscriber} is full"
            raise AuditJournalFullError(msg)
        return {"pending": runtime.bus.pending().get(subscriber, 0)}

    return check


def _config_check(runtime: Runtime) -> Check:
    async def check() -> Mapping[str, Any]:
        return {"backends": len(runtime.backends)}

    return check


def _metadata_check(runtime: Runtime) -> Check:
    async def check() -> None:
        await runtime.upstream.metadata()

    return check


def _jwks_check(runtime: Runtime) -> Check:
    async def check() -> Mapping[str, Any]:
        key_set = await runtime.upstream.idp.key_set()
        keys = await key_set.load()
        if keys == 0:
            msg = "the IdP's JWK Set has no usable key"
            raise NoSigningKeysError(msg)
        return {"keys": keys}

    return check


def _backend_check(http: httpx.AsyncClient, url: str) -> Check:
    async def check() -> Mapping[str, Any]:
        request = http.build_request("HEAD", url)
        response = await http.send(request, stream=True)
        await response.aclose()
        return {"http_status": response.status_code}

    return check


class NoSigningKeysError(Exception):
    """The IdP publishes no key the gateway can verify ID tokens with."""

    reason = "idp_no_keys"


class AuditJournalFullError(Exception):
    """A durable audit sink's journal is full, so publishing events waits."""

    reason = "audit_journal_full"
