"""A SERVER span per HTTP request of an embedded server: the dev IdP and demo backends.

The gateway's own endpoints trace themselves (see :mod:`gateway.mcp.endpoint`
and :mod:`gateway.app`). The dev IdP and the demo MCP backends are separate
ASGI apps, and this middleware gives each of their requests a span that
continues the caller's W3C ``traceparent``. The gateway's HTTP clients send
that header, so the IdP's token exchange and JWT-bearer handling and the
backend's request land in the gateway request's trace. In the demo all of
them run in one process and export through its one tracer provider, so
:class:`ComponentSpanProcessor` copies the middleware's
``agent_proxy.component`` to the spans started under it (the official MCP
SDK's span per message among them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.trace import SpanKind, StatusCode

from gateway.tracing_attributes import COMPONENT

_tracer = trace.get_tracer("gateway.asgi")

# Loose ASGI types, so that Litestar, Starlette and uvicorn all accept the
# middleware with their own, stricter ones.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


class ServerSpanMiddleware:
    """Run each HTTP request of ``app`` inside a SERVER span.

    The span is current while ``app`` runs, so spans that the app starts
    (the official MCP SDK's span per message, for one) nest under it unless
    they have a parent of their own. Once the route is known, the span is
    named ``{method} {route}``. The route is the template that Litestar
    matched (``scope["path_template"]``), or the path when it is one of
    ``routes``. Other paths leave the method alone as the name, so that
    unknown paths do not each create a span name. The span records
    ``http.response.status_code``, and status ERROR for a 5xx or an
    exception.

    Args:
        app: The ASGI app.
        component: Which server this is, as ``agent_proxy.component``.
        routes: Fixed paths that may name a span as they are, such as
            ``/mcp``.
    """

    def __init__(
        self, app: ASGIApp, *, component: str, routes: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.component = component
        self.routes = frozenset(routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI connection; only HTTP requests get a span."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        path = scope["path"]
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() in _CONTEXT_HEADERS
        }
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
            COMPONENT: self.component,
        }
        span = _tracer.start_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        status: int | None = None

        async def send_with_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            with trace.use_span(span, end_on_exit=False):
                await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("path_template") or (
                path if path in self.routes else None
            )
            if isinstance(route, str):
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(StatusCode.ERROR)
            span.end()


class ComponentSpanProcessor(SpanProcessor):
    """Give a span its parent's ``agent_proxy.component`` when it has none.

    Only a parent started in this process carries attributes that can be
    read, so the attribute never crosses an HTTP hop: the gateway's spans,
    whose parents are remote, stay without it. ``on_start`` runs on the
    thread that starts the span and only reads one attribute.
    """

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        """Copy the parent's component to ``span``."""
        if span.attributes and COMPONENT in span.attributes:
            return
        parent = trace.get_current_span(parent_context)
        if not isinstance(parent, ReadableSpan):
            return
        component = (parent.attributes or {}).get(COMPONENT)
        if component is not None:
            span.set_attribute(COMPONENT, component)

    def on_end(self, span: ReadableSpan) -> None:
        """Do nothing; the attribute is set at the start."""
