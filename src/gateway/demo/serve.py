"""Run ASGI apps with uvicorn inside an anyio task group.

The demo runs the dev IdP, the demo backends and the gateway in one process,
and the tests start them on ephemeral ports. Both need to know the real port
before the app starts (the dev IdP's issuer contains it), so the caller may
bind the socket first with :func:`bind_socket` and hand it over.

uvicorn runs on asyncio only, so these helpers need anyio's asyncio backend.
The embedded servers install no signal handlers and leave logging
configuration alone: the host process owns both. Cancelling :func:`serve_app`
shuts the server down gracefully, bounded by ``shutdown_timeout``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import uvicorn

from gateway.http_protocol import with_header_timeout

__all__ = ["RunningApp", "bind_socket", "run_app", "serve_app"]

ASGIApplication = Callable[[Any, Any, Any], Awaitable[None]]
"""Any ASGI 3 application, such as a Litestar or Starlette app."""

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Return a TCP socket bound to ``host:port``; port 0 picks a free port.

    Read the chosen port with ``sock.getsockname()[1]``.

    Raises:
        OSError: The address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # With IPPROTO_TCP, asyncio sets TCP_NODELAY on each accepted connection;
    # with the default proto 0 it does not, and on a keep-alive connection
    # Nagle's algorithm then holds a response's body until the peer's
    # delayed ACK, about 40 ms on Linux.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that reports readiness and leaves signals alone."""

    def __init__(self, config: uvicorn.Config, ready: anyio.Event | None) -> None:
        super().__init__(config)
        self._ready = ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._ready is not None:
            self._ready.set()


async def serve_app(
    app: ASGIApplication,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    ready: anyio.Event | None = None,
    log_level: LogLevel = "warning",
    access_log: bool = False,
    shutdown_timeout: float = 3.0,
    header_timeout: float | None = None,
) -> None:
    """Serve ``app`` over HTTP until cancelled, then shut down gracefully.

    Args:
        app: The ASGI application; its lifespan runs at start and stop.
        host: Address to bind when ``sock`` is None.
        port: Port to bind when ``sock`` is None; 0 picks a free port.
        sock: An already bound socket, which the server takes over and closes.
        ready: Set once the server accepts connections.
        log_level: Level of uvicorn's own loggers.
        access_log: Whether uvicorn logs one line per request.
        shutdown_timeout: Seconds to wait for open connections at shutdown
            before cancelling them.
        header_timeout: Seconds a client may take to send a request's
            headers before its connection is closed; None sets no limit.

    Raises:
        RuntimeError: The application's lifespan startup failed.
        OSError: ``host:port`` cannot be bound.
    """
    if sock is None:
        sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=max(1, round(shutdown_timeout)),
        http=with_header_timeout(header_timeout) if header_timeout else "auto",
    )
    server = _EmbeddedServer(config, ready)
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        # uvicorn calls sys.exit when the lifespan startup fails.
        msg = f"the ASGI application failed to start (uvicorn exit code {exc.code})"
        raise RuntimeError(msg) from None
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True), anyio.move_on_after(shutdown_timeout + 2):
            if server.started:
                server.should_exit = True
                await server.shutdown(sockets=[sock])
        raise
    finally:
        sock.close()


@dataclass(frozen=True, slots=True)
class RunningApp:
    """Address of an app started by :func:`run_app`."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL, such as ``http://127.0.0.1:8001``, with no trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@contextlib.asynccontextmanager
async def run_app(
    app: ASGIApplication,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    log_level: LogLevel = "warning",
    shutdown_timeout: float = 3.0,
    header_timeout: float | None = None,
) -> AsyncIterator[RunningApp]:
    """Serve ``app`` in the background while the context is open.

    The context is entered once the server accepts connections and exits after
    the server has shut down. Enter and exit it in the same task. A single
    exception, from the server or from the body, propagates as itself rather
    than inside an exception group.

    Args:
        app: The ASGI application.
        host: Address to bind when ``sock`` is None.
        port: Port to bind when ``sock`` is None; 0 picks a free port.
        sock: An already bound socket, which the server takes over.
        log_level: Level of uvicorn's own loggers.
        shutdown_timeout: See :func:`serve_app`.
        header_timeout: See :func:`serve_app`.
    """
    if sock is None:
        sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    ready = anyio.Event()

    async def serve() -> None:
        await serve_app(
            app,
            sock=sock,
            ready=ready,
            log_level=log_level,
            shutdown_timeout=shutdown_timeout,
            header_timeout=header_timeout,
        )

    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(serve)
            await ready.wait()
            try:
                yield RunningApp(host=bound_host, port=bound_port)
            finally:
                task_group.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
