"""The pooled HTTP client of the forward hop to one backend MCP server."""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from gateway import __version__
from gateway.config import BackendConfig

_tracer = trace.get_tracer("gateway.mcp.backend")

USER_AGENT = f"okta-agent-proxy/{__version__}"

KEEPALIVE_EXPIRY_SECONDS = 4.0
"""Idle pooled connections are dropped after this long. It is below uvicorn's
default keep-alive timeout of 5 s (``timeout_keep_alive`` in uvicorn 0.55), so
the gateway does not send a request on a connection that such a backend is
closing at that moment."""

MAX_CONNECT_SECONDS = 10.0


class UpstreamStreamError(Exception):
    """The backend's response stream failed after the response had started."""


class BackendClient:
    """Sends MCP requests to one backend over one pooled ``httpx.AsyncClient``.

    Timeouts: ``config.timeout`` bounds the wait for the response headers and,
    for JSON bodies, each read of the body. An event stream has no read
    timeout, because a backend may stay silent between events for as long as a
    tool runs. There is no total timeout. Connecting is bounded by
    ``config.timeout`` or 10 s, whichever is shorter.

    Each call runs in a client span and carries the W3C trace context of that
    span to the backend. Environment proxy settings are ignored, redirects
    are not followed, and cookies are neither stored nor sent: the client is
    shared by every user, so a cookie set for one user's request would
    otherwise be replayed on everyone's.
    """

    def __init__(
        self,
        config: BackendConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.url = httpx.URL(config.url)
        self._span_attributes: dict[str, Any] = {
            "url.full": str(self.url),
            "server.address": self.url.host,
            "server.port": self.url.port or (443 if self.url.scheme == "https" else 80),
        }
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                config.timeout, connect=min(config.timeout, MAX_CONNECT_SECONDS)
            ),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
            ),
            headers={"user-agent": USER_AGENT},
            cookies=_cookie_jar_that_stores_nothing(),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    async def send(
        self, method: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        """Send one request to the backend's MCP URL and return once headers arrive.

        The body is not read: the caller must read or iterate it and must
        close the response (``await response.aclose()``) in every case.

        Args:
            method: ``POST``, ``GET`` or ``DELETE``.
            headers: The complete upstream request headers; this dict is not
                changed (trace context is added to a copy).
            body: The raw request body, empty for GET and DELETE.

        Raises:
            httpx.TimeoutException: Connecting or waiting for headers timed out.
            httpx.TransportError: The connection failed or was reset.
        """
        with _tracer.start_as_current_span(
            method, kind=SpanKind.CLIENT, attributes=self._span_attributes
        ) as span:
            span.set_attribute("http.request.method", method)
            outgoing = dict(headers)
            propagate.inject(outgoing)
            request = self._client.build_request(
                method, self.url, headers=outgoing, content=body or None
            )
            response = await self._client.send(request, stream=True)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(trace.StatusCode.ERROR)
        if _is_event_stream(response):
            # httpcore reads the timeouts from this dict when the body is first
            # read, so replacing the read timeout here applies to the stream.
            timeouts = dict(request.extensions.get("timeout", {}))
            timeouts["read"] = None
            request.extensions["timeout"] = timeouts
        return response

    async def aclose(self) -> None:
        """Close the pool and every idle connection."""
        await self._client.aclose()


def _cookie_jar_that_stores_nothing() -> CookieJar:
    # An empty domain allow-list makes the policy refuse every cookie.
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def _is_event_stream(response: httpx.Response) -> bool:
    content_type = str(response.headers.get("content-type", ""))
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
