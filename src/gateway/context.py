"""The request context of an MCP request going through a chain."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.facts import AGENT, PRINCIPAL
from gateway.mcp.eras import Envelope, Era, era_of
from gateway.mcp.jsonrpc import MAX_NAME_LENGTH, shorten
from pipeline import Context

if TYPE_CHECKING:
    from gateway.config import BackendConfig
    from gateway.mcp.jsonrpc import JsonRpcMessage
    from gateway.runtime import Runtime


class RequestContext(Context):
    """One HTTP request to a backend's MCP endpoint.

    The HTTP layer fills every field before the chain runs; stages add facts
    (see :mod:`gateway.facts`) and may set ``tool`` and ``response_session_id``.

    Attributes:
        runtime: The gateway's shared services.
        request_id: The gateway's id for this request (also ``X-Request-Id``).
        http_method: ``POST``, ``GET`` or ``DELETE``.
        backend_name: The backend's name in config.
        backend: The backend's config.
        resource: The backend's canonical resource URL at the gateway.
        headers: Request headers, names lower-case; repeated headers joined.
        body: The raw request body (empty for GET and DELETE).
        message: The parsed JSON-RPC message of a POST.
        mcp_method: The JSON-RPC method, or None (responses, GET, DELETE).
        tool: The tool name of a ``tools/call``, or None.
        protocol_version: The client's ``MCP-Protocol-Version`` header, if any.
        era: The client's protocol era, from that header (``handshake`` when
            the header is absent).
        envelope: The checked 2026-07-28 envelope of a stateless request,
            else None.
        session_id: The client's ``Mcp-Session-Id`` header, if any.
        response_session_id: The session id to return to the client, set by
            the session stage on ``initialize``.
        started: ``time.perf_counter()`` when the request arrived.
        attributes: Free-form values for stages, such as audit details.
    """

    __slots__ = (
        "attributes",
        "backend",
        "backend_name",
        "body",
        "envelope",
        "era",
        "headers",
        "http_method",
        "mcp_method",
        "message",
        "protocol_version",
        "request_id",
        "resource",
        "response_session_id",
        "runtime",
        "session_id",
        "started",
        "tool",
    )

    def event_fields(self, stage: str) -> dict[str, Any]:
        """Return the fields every event about this request carries.

        ``user`` and ``agent`` come from the ``principal`` and ``agent`` facts
        and are None while those facts are not provided yet.
        """
        from gateway.events import AgentRef, UserRef

        principal = self.facts.get(PRINCIPAL)
        agent = self.facts.get(AGENT)
        user = UserRef(iss=principal.iss, sub=principal.sub) if principal else None
        return {
            "request_id": self.request_id,
            "stage": stage,
            "user": user,
            "agent": (
                AgentRef(id=agent.id, verified=agent.verified, trust=agent.trust)
                if agent
                else None
            ),
            "backend": self.backend_name,
            "method": self.mcp_method,
            "tool": self.tool,
            "protocol_version": self.protocol_version,
        }

    def __init__(
        self,
        *,
        runtime: Runtime,
        request_id: str,
        http_method: str,
        backend_name: str,
        backend: BackendConfig,
        resource: str,
        headers: dict[str, str],
        body: bytes = b"",
        message: JsonRpcMessage | None = None,
        envelope: Envelope | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.request_id = request_id
        self.http_method = http_method
        self.backend_name = backend_name
        self.backend = backend
        self.resource = resource
        self.headers = headers
        self.body = body
        self.message = message
        self.mcp_method = message.method if message is not None else None
        tool = message.tool_name if message is not None else None
        # Events copy the tool name, so an over-long one is cut here; the
        # authorize stage rejects the request itself.
        self.tool = shorten(tool, MAX_NAME_LENGTH) if tool is not None else None
        self.protocol_version = headers.get("mcp-protocol-version")
        self.era: Era = era_of(self.protocol_version)
        self.envelope = envelope
        self.session_id = headers.get("mcp-session-id")
        self.response_session_id: str | None = None
        self.started = time.perf_counter()
        self.attributes: dict[str, Any] = {}
