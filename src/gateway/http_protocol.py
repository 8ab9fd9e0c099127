"""uvicorn's HTTP protocol with a time limit on request headers.

uvicorn (0.55) limits how long an idle keep-alive connection stays open, but
not how long a client may take to send a request's headers, so a client
sending one header byte at a time holds a connection forever. The protocol
here closes a connection whose request line and headers have not all
arrived within the limit, counted from the connection's first moment or,
on a kept-alive connection, from the first byte of the next request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("gateway.http")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """An httptools protocol that closes connections with slow headers.

    Subclasses set :attr:`header_timeout` (see :func:`with_header_timeout`).
    The timer stops once the headers are complete; the body has its own
    limit (``server.body_timeout``), applied by the MCP endpoint.
    """

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection and the timer for its first request's headers."""
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        """Start timing the headers of a request on a kept-alive connection."""
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        """Stop the timer: the headers arrived in time."""
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timer with the connection."""
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.header_timeout, self._headers_timed_out
            )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.warning(
            "http.headers_timed_out",
            client=":".join(str(part) for part in self.client or ()),
            header_timeout=self.header_timeout,
        )
        self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """Return a protocol class for uvicorn's ``http`` setting with this limit."""
    return type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout": seconds},
    )
