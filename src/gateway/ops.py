"""The operational endpoints: ``/healthz``, ``/readyz`` and ``/metrics``.

They are raw ASGI, outside the OAuth front door and the MCP chain, and
untraced, because probes and scrapes every few seconds would fill the trace
store. None of them needs a user token: ``/metrics`` can require a static
bearer token (``telemetry.metrics.bearer_token``), and operators restrict
all three at the network layer.

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process serves.
- ``GET /readyz``: 200 when every readiness check passed, 503 otherwise,
  with the report of :class:`~gateway.health.ReadinessReport` as the body.
- ``GET /metrics``: the Prometheus exposition, or OpenMetrics when the
  scraper's ``Accept`` header requests it.

``HEAD`` is answered like ``GET`` without a body; other methods get 405.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec

from gateway.health import ReadinessChecker
from gateway.metrics import GatewayMetrics

HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"

_SESSION_COUNT_MAX_AGE = 1.0
"""Seconds a session count read for an earlier scrape is reused."""


class OpsEndpoints:
    """Serve the operational endpoints that are enabled.

    Args:
        readiness: The readiness checks; None disables ``/healthz`` and
            ``/readyz``.
        metrics: The gateway's metrics; None, or metrics without a Prometheus
            registry, disables ``/metrics``.
        metrics_token: When not empty, ``/metrics`` requires
            ``Authorization: Bearer`` with this value.
    """

    def __init__(
        self,
        *,
        readiness: ReadinessChecker | None,
        metrics: GatewayMetrics | None,
        metrics_token: str = "",
    ) -> None:
        self.readiness = readiness
        self.metrics = metrics
        self._token = metrics_token.encode()
        paths: set[str] = set()
        if readiness is not None:
            paths |= {HEALTHZ, READYZ}
        if metrics is not None and metrics.prometheus_registry is not None:
            paths.add(METRICS)
        self.paths = frozenset(paths)
        """The paths served; other paths belong to the rest of the gateway."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one HTTP request to a path in :attr:`paths`."""
        method = scope["method"]
        path = scope["path"]
        if method not in ("GET", "HEAD"):
            await _send(
                send,
                405,
                b'{"error":"method_not_allowed"}',
                "application/json",
                head=False,
                extra=[(b"allow", b"GET, HEAD")],
            )
            return
        head = method == "HEAD"
        if path == HEALTHZ:
            await _send(send, 200, b'{"status":"ok"}', "application/json", head=head)
        elif path == READYZ and self.readiness is not None:
            report = await self.readiness.report()
            status = 200 if report.ready else 503
            body = msgspec.json.encode(report)
            await _send(send, status, body, "application/json", head=head)
        elif path == METRICS and self.metrics is not None:
            await self._serve_metrics(self.metrics, scope, send, head)
        else:
            body = b'{"error":"not_found"}'
            await _send(send, 404, body, "application/json", head=head)

    async def _serve_metrics(
        self, metrics: GatewayMetrics, scope: dict[str, Any], send: Any, head: bool
    ) -> None:
        headers = dict(scope["headers"])
        if self._token and not self._authorized(headers.get(b"authorization", b"")):
            await _send(
                send,
                401,
                b'{"error":"invalid_token"}',
                "application/json",
                head=head,
                extra=[(b"www-authenticate", b'Bearer realm="metrics"')],
            )
            return
        await metrics.refresh(max_age=_SESSION_COUNT_MAX_AGE)
        accept = headers.get(b"accept", b"").decode("latin-1")
        body, content_type = metrics.render_prometheus(accept)
        await _send(send, 200, body, content_type, head=head)

    def _authorized(self, authorization: bytes) -> bool:
        scheme, _, credential = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credential.strip(), self._token)


async def _send(
    send: Any,
    status: int,
    body: bytes,
    content_type: str,
    *,
    head: bool,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
