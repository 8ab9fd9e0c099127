"""The SERVER span of an MCP endpoint request, with MCP semantic-convention attributes.

One span covers the HTTP request and the MCP message it carries, because a
streamable HTTP POST carries exactly one message. Its name follows the
OpenTelemetry MCP conventions, ``{mcp.method.name} {target}`` with the tool
or prompt name as target (``tools/call get_employee``). A request without a
parsed message (GET, DELETE, a body rejected before parsing) keeps the HTTP
name ``{method} {route}``. The resource URI of ``resources/read`` is left
out of names and attributes, because it can name user data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util import types

from gateway.facts import AGENT, PRINCIPAL, AgentIdentity, Principal
from gateway.mcp.jsonrpc import JsonRpcMessage, shorten
from gateway.mcp.response import GatewayResponse
from gateway.mcp.trace_context import extract_context, parent_context
from gateway.tracing_attributes import (
    AGENT_ID,
    AGENT_TRUST,
    BACKEND,
    user_attributes,
)

if TYPE_CHECKING:
    from gateway.context import RequestContext

MAX_TARGET_LENGTH = 128
"""Maximum length of a tool or prompt name in a span name or attribute."""
MAX_ERROR_BODY_BYTES = 64 * 1024
"""Maximum size of a JSON error body that is read for its JSON-RPC error code."""


class ServerSpan(Span):
    """A SERVER span that starts once its parent is known.

    The parent may come from ``params._meta`` (see
    :mod:`gateway.mcp.trace_context`), which is known only after the body is
    parsed. Until :meth:`start` runs, attributes and the name are kept and
    applied at the start, which is dated to the request's arrival. Anything
    that needs the span itself (its context for a child span or an event,
    its status, :meth:`end`) starts it with the header context first.

    Code that runs while the span is starting (a log processor reached by
    the propagator's warning about a malformed header, for one) must read
    :attr:`started_span` and never start the span: a nested :meth:`start`
    returns the invalid span instead of starting a second time.
    """

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        headers: Mapping[str, str],
        attributes: dict[str, Any],
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._headers = headers
        self._attributes = attributes
        self._start_time = time.time_ns()
        self._span: Span | None = None
        self._header_context: Context | None = None
        self._starting = False

    @property
    def started_span(self) -> Span | None:
        """The span once it has started, else None; reading it starts nothing."""
        return self._span

    def start(self, params: Mapping[str, Any] | None = None) -> Span:
        """Start the span under the ``_meta`` or header context, once.

        Args:
            params: The parsed message's params, whose ``_meta`` may carry
                the parent; None uses the headers alone. Ignored once the
                span has started.

        Returns:
            The started span, or the invalid span when called while the span
            is starting.
        """
        span = self._span
        if span is not None:
            return span
        if self._starting:
            return INVALID_SPAN
        self._starting = True
        try:
            if self._header_context is None:
                self._header_context = extract_context(self._headers)
            parent, links = parent_context(
                self._headers, params, header_context=self._header_context
            )
            span = self._tracer.start_span(
                self._name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=self._attributes,
                links=links,
                start_time=self._start_time,
            )
        finally:
            self._starting = False
        self._span = span
        return span

    def end(self, end_time: int | None = None) -> None:
        """End the span, starting it first with the header context if needed."""
        self.start().end(end_time)

    def get_span_context(self) -> Any:
        """Return the context of the span, starting it if needed."""
        return self.start().get_span_context()

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Set attributes, kept for the start while the span has not started."""
        if self._span is None:
            self._attributes.update(attributes)
        else:
            self._span.set_attributes(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """Set one attribute, kept for the start while the span has not started."""
        if self._span is None:
            self._attributes[key] = value
        else:
            self._span.set_attribute(key, value)

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        """Add an event to the span, starting it if needed."""
        self.start().add_event(name, attributes, timestamp)

    def update_name(self, name: str) -> None:
        """Rename the span, also before it has started."""
        if self._span is None:
            self._name = name
        else:
            self._span.update_name(name)

    def is_recording(self) -> bool:
        """Return whether the span records, starting it if needed."""
        return self.start().is_recording()

    def set_status(
        self, status: Status | StatusCode, description: str | None = None
    ) -> None:
        """Set the status of the span, starting it if needed."""
        self.start().set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Record an exception on the span, starting it if needed."""
        self.start().record_exception(exception, attributes, timestamp, escaped)


def start_server_span(
    tracer: Tracer,
    scope: Mapping[str, Any],
    route: str,
    backend_name: str | None,
    headers: Mapping[str, str],
) -> ServerSpan:
    """Return the not yet started SERVER span of one ASGI HTTP request.

    It carries the HTTP and network attributes known from ``scope`` and the
    headers: method, path, route, scheme, HTTP version, client address and
    port, ``mcp.protocol.version`` from ``MCP-Protocol-Version``, and the
    backend.
    """
    method = scope["method"]
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "http.route": route,
        "network.transport": "tcp",
        "network.protocol.name": "http",
        BACKEND: backend_name or "",
    }
    http_version = scope.get("http_version")
    if http_version:
        attributes["network.protocol.version"] = http_version
    client = scope.get("client")
    if isinstance(client, Sequence) and len(client) == 2:
        attributes["client.address"] = str(client[0])
        attributes["client.port"] = int(client[1])
    version = headers.get("mcp-protocol-version")
    if version:
        attributes["mcp.protocol.version"] = shorten(version, 32)
    return ServerSpan(tracer, f"{method} {route}", headers, attributes)


def describe_message(span: Span, message: JsonRpcMessage) -> None:
    """Name ``span`` after the message, add its attributes, and start it.

    Sets ``mcp.method.name``, ``jsonrpc.request.id``, ``gen_ai.tool.name``
    and ``gen_ai.operation.name`` (``execute_tool``) of a ``tools/call``,
    ``gen_ai.prompt.name`` of a ``prompts/get``, and the requested
    ``mcp.protocol.version`` of an ``initialize``. ``jsonrpc.protocol.version``
    is left out: the conventions want it only when it is not ``2.0``, and
    every accepted message is 2.0.
    """
    attributes: dict[str, Any] = {}
    target: str | None = None
    if message.method is not None:
        attributes["mcp.method.name"] = shorten(message.method, MAX_TARGET_LENGTH)
    if message.id is not None:
        attributes["jsonrpc.request.id"] = str(message.id)
    tool = message.tool_name
    if tool is not None:
        target = shorten(tool, MAX_TARGET_LENGTH)
        attributes["gen_ai.tool.name"] = target
        attributes["gen_ai.operation.name"] = "execute_tool"
    elif message.method == "prompts/get":
        name = message.params.get("name")
        if isinstance(name, str):
            target = shorten(name, MAX_TARGET_LENGTH)
            attributes["gen_ai.prompt.name"] = target
    elif message.method == "initialize":
        version = message.params.get("protocolVersion")
        if isinstance(version, str):
            attributes["mcp.protocol.version"] = shorten(version, 32)
    span.set_attributes(attributes)
    if message.method is not None:
        method = attributes["mcp.method.name"]
        span.update_name(f"{method} {target}" if target else method)
    if isinstance(span, ServerSpan):
        span.start(message.params)


def describe_request(span: Span, ctx: RequestContext) -> None:
    """Add what the chain found out: the agent, the user and the session.

    The user appears as ``telemetry.user_identifiers`` sets, and the
    session id as the same SHA-256 prefix that events use, never as itself.
    """
    from gateway.bridge.handshake import session_ref

    attributes: dict[str, Any] = {}
    agent: AgentIdentity | None = ctx.get_fact(AGENT)
    if agent is not None:
        attributes[AGENT_ID] = agent.id
        attributes[AGENT_TRUST] = agent.trust
    principal: Principal | None = ctx.get_fact(PRINCIPAL)
    if principal is not None:
        mode = ctx.runtime.config.telemetry.user_identifiers
        attributes.update(user_attributes(principal.iss, principal.sub, mode))
    session_id = ctx.response_session_id or ctx.session_id
    if session_id:
        attributes["mcp.session.id"] = session_ref(session_id)
    if attributes:
        span.set_attributes(attributes)


def describe_response(span: Span, response: GatewayResponse) -> None:
    """Record a failed request on ``span``: status ERROR and ``error.type``.

    A request failed when the gateway responded with an error of its own
    (``response.reason`` is set, such as ``tool_denied`` or
    ``backend_unavailable``), which becomes ``error.type``, or with HTTP 5xx.
    The JSON-RPC error code of a JSON error body becomes
    ``rpc.response.status_code``, as the MCP conventions name it. A tool
    result with ``isError`` is the backend's result and is not marked here;
    the backend's own span marks it.
    """
    reason = response.reason
    if reason is None and response.status < 500:
        return
    attributes: dict[str, Any] = {"error.type": reason or str(response.status)}
    code = _error_code(response)
    if code is not None:
        attributes["rpc.response.status_code"] = str(code)
    span.set_attributes(attributes)
    span.set_status(StatusCode.ERROR, reason)


def _error_code(response: GatewayResponse) -> int | None:
    if response.is_stream or response.content_type != "application/json":
        return None
    if not response.body or len(response.body) > MAX_ERROR_BODY_BYTES:
        return None
    try:
        message = msgspec.json.decode(response.body)
    except msgspec.DecodeError:
        return None
    error = message.get("error") if isinstance(message, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return None
