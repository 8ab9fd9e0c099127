"""The pooled HTTP client of the forward hop to one backend MCP server.

The hop runs on aiohttp because it is on every request's path. On a 2-core
AMD EPYC (Zen 4) VM at 2.6 GHz, ``bench/forward_hop.py`` measured the client
CPU of one loopback POST: about 0.18 ms with ``aiohttp.ClientSession``,
0.42 ms with httpx over the ``httpx-aiohttp`` transport, and 0.68 ms with
``httpx.AsyncClient``. :class:`BackendClient`, with its client span, costs
about 0.27 ms. Callers still get an ``httpx.Response`` and ``httpx``
exceptions, as from the gateway's other outbound calls.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import aiohttp
import anyio
import httpx
import yarl
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

# Without this, aiohttp labels a body that has no Content-Type header as
# application/octet-stream. The caller's headers are meant to be complete.
_SKIPPED_AUTO_HEADERS = frozenset({"Content-Type"})


DECODED_CONTENT_CODINGS: Final = frozenset({"identity", "gzip", "deflate"})
"""``Content-Encoding`` values that ``httpx.Response`` always decodes when a
body is read (httpx 0.29). It decodes ``br`` and ``zstd`` only when the
optional ``brotli`` and ``zstandard`` packages are installed, and passes
other codings through undecoded."""


class UpstreamStreamError(Exception):
    """The backend's response stream failed after the response had started."""


class DeadlineExceeded(httpx.TimeoutException):
    """The request's deadline passed before the backend completed its answer."""


def unsupported_content_encoding(headers: Mapping[str, str]) -> str | None:
    """Return the first ``Content-Encoding`` coding that is not decoded, if any.

    Bodies are read decoded (see :data:`DECODED_CONTENT_CODINGS`), so the
    gateway relays them without the header. A coding outside that set would
    reach the client as encoded bytes, so a caller must reject the body.
    """
    value = headers.get("content-encoding")
    if not value:
        return None
    for coding in value.split(","):
        coding = coding.strip().lower()
        if coding and coding not in DECODED_CONTENT_CODINGS:
            return coding
    return None


class BackendClient:
    """Sends MCP requests to one backend over one pooled aiohttp session.

    Timeouts: ``config.timeout`` bounds the wait for a pooled connection, the
    wait for the response headers and, for other bodies than event streams,
    each read of the body. An event stream has no read timeout, because a
    backend may stay silent between events for as long as a tool runs. There
    is no total timeout. Opening a connection is bounded by
    ``config.timeout`` or 10 s, whichever is shorter.

    Each call runs in a client span and carries the W3C trace context of that
    span to the backend. Environment proxy settings are ignored, redirects
    are not followed, and cookies are neither stored nor sent: the client is
    shared by every user, so a cookie set for one user's request would
    otherwise be replayed on everyone's. Bodies are not decompressed here;
    ``httpx.Response`` decodes a ``Content-Encoding`` when the body is read,
    and raises ``httpx.DecodingError`` for bytes that do not match it (see
    :func:`unsupported_content_encoding` for codings it leaves encoded).
    Certificates of https backends are checked against certifi's CA bundle,
    as ``httpx.AsyncClient(trust_env=False)`` does.

    The aiohttp session is created on the first request, so the client can
    be built outside a running event loop; it needs the asyncio backend.
    """

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.url = httpx.URL(config.url)
        self._target = yarl.URL(config.url)
        self._span_attributes: dict[str, Any] = {
            "url.full": str(self.url),
            "server.address": self.url.host,
            "server.port": self.url.port or (443 if self.url.scheme == "https" else 80),
        }
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=config.timeout,
            sock_connect=min(config.timeout, MAX_CONNECT_SECONDS),
            sock_read=config.timeout,
        )
        # Loading the CA bundle blocks for about 20 ms, so it happens here,
        # before the event loop serves requests.
        self._ssl: ssl.SSLContext | bool = True
        if self.url.scheme == "https":
            self._ssl = httpx.create_ssl_context(trust_env=False)
            self._ssl.set_alpn_protocols(["http/1.1"])
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE_EXPIRY_SECONDS,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"user-agent": USER_AGENT},
            skip_auto_headers=_SKIPPED_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._timeout,
            auto_decompress=False,
            trust_env=False,
        )
        return self._session

    async def send(
        self,
        method: str,
        headers: dict[str, str],
        body: bytes,
        *,
        deadline: float | None = None,
    ) -> httpx.Response:
        """Send one request to the backend's MCP URL and return once headers arrive.

        The body is not read: the caller must read or iterate it and must
        close the response (``await response.aclose()``) in every case, which
        returns the connection to the pool or, when the body was not read to
        its end, closes it.

        Args:
            method: ``POST``, ``GET`` or ``DELETE``.
            headers: The complete upstream request headers; this dict is not
                changed (trace context is added to a copy).
            body: The raw request body, empty for GET and DELETE.
            deadline: A ``time.perf_counter()`` value after which the request
                is abandoned and its connection closed, or None.

        Raises:
            DeadlineExceeded: The headers had not arrived at ``deadline``.
            httpx.TimeoutException: Connecting or waiting for headers timed out.
            httpx.TransportError: The connection failed or was reset, the
                response was not valid HTTP, or a header value contained a
                control character (``httpx.LocalProtocolError``).
        """
        session = self._session or self._open_session()
        if session.closed:
            # A reload closed this pool while a client still used it, for
            # example to resume a stream with Last-Event-ID.
            msg = "the backend connection pool is closed"
            raise httpx.ConnectError(msg)
        with _tracer.start_as_current_span(
            method, kind=SpanKind.CLIENT, attributes=self._span_attributes
        ) as span:
            span.set_attribute("http.request.method", method)
            outgoing = dict(headers)
            propagate.inject(outgoing)
            # No cancel scope without a deadline, because this is every
            # request's path.
            limit: contextlib.AbstractContextManager[Any] = (
                contextlib.nullcontext()
                if deadline is None
                else anyio.move_on_after(deadline - time.perf_counter())
            )
            upstream: aiohttp.ClientResponse | None = None
            try:
                with limit:
                    upstream = await session.request(
                        method,
                        self._target,
                        headers=outgoing,
                        data=body or None,
                        allow_redirects=False,
                    )
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _as_httpx_error(exc) from exc
            except ValueError as exc:
                # aiohttp rejects a CR, LF or NUL in a header value this way.
                msg = f"invalid request to the backend: {exc}"
                raise httpx.LocalProtocolError(msg) from exc
            if upstream is None:
                msg = "the request's deadline passed before the response headers"
                raise DeadlineExceeded(msg)
            status = upstream.status
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        if _is_event_stream(upstream):
            _stop_read_timeout(upstream)
        return httpx.Response(
            status, headers=upstream.raw_headers, stream=_ResponseBody(upstream)
        )

    async def aclose(self) -> None:
        """Close the pool and every idle connection."""
        if self._session is not None:
            await self._session.close()


class _ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response body as httpx reads it: chunks as they arrive."""

    def __init__(self, upstream: aiohttp.ClientResponse) -> None:
        self._upstream = upstream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._upstream.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _as_httpx_error(exc) from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # A fully read body returns its connection to the pool; otherwise
        # aiohttp closes the connection, because unread bytes remain on it.
        self._upstream.release()


def _is_event_stream(upstream: aiohttp.ClientResponse) -> bool:
    content_type = upstream.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def _stop_read_timeout(upstream: aiohttp.ClientResponse) -> None:
    # The per-read timeout lives on the connection's protocol, and aiohttp
    # clears it the same way for WebSocket connections. Restarting the timer
    # with no timeout cancels the one running since the headers arrived. The
    # next request on this connection sets its own read timeout again.
    connection = upstream.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is not None:
        protocol.read_timeout = None
        protocol.start_timeout()


def _as_httpx_error(exc: BaseException) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientResponseError,
    ):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(message)
    return httpx.TransportError(message)
