"""The protocol era of each backend, learned with one ``server/discover``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.bridge.derived import derived_context, read_messages, result_of
from gateway.context import RequestContext
from gateway.mcp.eras import (
    LATEST_STATELESS_VERSION,
    SERVER_INFO_KEY,
    STATELESS_VERSIONS,
    Envelope,
    Era,
)
from gateway.mcp.response import GatewayResponse
from gateway.stages.forward import BACKEND_STATUS
from pipeline import Next

log = structlog.get_logger("gateway.bridge.backend_era")

VERDICT_TTL = 300.0
"""Seconds a probed era is trusted before the next request probes again."""
GATEWAY_CLIENT_INFO = {"name": "okta-agent-proxy", "version": "0.1.0"}
"""The ``clientInfo`` the gateway sends for requests of its own."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """The description a 2026-07-28 backend returns from ``server/discover``.

    Attributes:
        capabilities: The server's capabilities.
        server_info: Its ``serverInfo`` (name and version), if it sent one.
        instructions: Its instructions for the model, if any.
    """

    capabilities: dict[str, Any]
    server_info: dict[str, Any] | None = None
    instructions: str | None = None

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> Discovery:
        """Read a ``DiscoverResult`` object."""
        meta = result.get("_meta")
        info = meta.get(SERVER_INFO_KEY) if isinstance(meta, dict) else None
        capabilities = result.get("capabilities")
        instructions = result.get("instructions")
        return cls(
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            server_info=info if isinstance(info, dict) else None,
            instructions=instructions if isinstance(instructions, str) else None,
        )


@dataclass(slots=True)
class BackendEras:
    """The eras each backend serves, as configured or learned (per process).

    Two facts are kept apart, because a backend may serve both eras:

    - whether it serves 2026-07-28, which a 2026-07-28 client needs to know.
      With ``protocol: auto``, :meth:`probe` sends ``server/discover`` at
      2026-07-28: a result listing a 2026-07-28 version means yes, and any
      other response (an HTTP or JSON-RPC error) no.
    - whether it refuses the ``initialize`` handshake, which a handshake-era
      client needs to know. Only a refused ``initialize`` (-32022 naming no
      handshake revision) teaches that, through :meth:`record_refusal`.

    ``protocol: stateless`` means yes to both and ``handshake`` no to both.
    Learned facts are kept for :data:`VERDICT_TTL` seconds, so a backend
    that upgrades is noticed.
    """

    ttl: float = VERDICT_TTL
    _serves_stateless: dict[str, tuple[bool, float]] = field(default_factory=dict)
    _refuses_handshake: dict[str, float] = field(default_factory=dict)

    def serves_stateless(self, ctx: RequestContext) -> bool | None:
        """Return whether the backend serves 2026-07-28, or None when unknown."""
        configured = ctx.backend.protocol
        if configured != "auto":
            return configured == "stateless"
        verdict = self._serves_stateless.get(ctx.backend_name)
        if verdict is None or verdict[1] < time.monotonic():
            return None
        return verdict[0]

    def refuses_handshake(self, ctx: RequestContext) -> bool:
        """Return whether the backend is known to refuse ``initialize``."""
        configured = ctx.backend.protocol
        if configured != "auto":
            return configured == "stateless"
        until = self._refuses_handshake.get(ctx.backend_name)
        return until is not None and until >= time.monotonic()

    def record_refusal(self, backend: str) -> None:
        """Remember that ``backend`` refused ``initialize``: 2026-07-28 only."""
        if backend not in self._refuses_handshake:
            log.info("backend.era_detected", backend=backend, era="stateless-only")
        self._refuses_handshake[backend] = time.monotonic() + self.ttl

    def _record_probe(self, backend: str, serves_stateless: bool) -> None:
        previous = self._serves_stateless.get(backend)
        if previous is None or previous[0] != serves_stateless:
            era: Era = "stateless" if serves_stateless else "handshake"
            log.info("backend.era_detected", backend=backend, era=era)
        self._serves_stateless[backend] = (
            serves_stateless,
            time.monotonic() + self.ttl,
        )

    async def probe(
        self,
        ctx: RequestContext,
        call_next: Next[RequestContext, GatewayResponse],
        envelope: Envelope | None = None,
    ) -> tuple[Era | None, Discovery | None]:
        """Send ``server/discover`` through the rest of the chain and record the result.

        Args:
            ctx: The client's request, whose credentials the probe uses.
            call_next: The rest of the chain after the session stage.
            envelope: The client's envelope; the gateway's own otherwise.

        Returns:
            ``stateless`` when the backend serves 2026-07-28, ``handshake``
            when it does not, None when it could not be reached (not
            recorded); and for ``stateless``, what it discovered.
        """
        sent = envelope or Envelope(
            protocol_version=LATEST_STATELESS_VERSION,
            client_capabilities={},
            client_info=GATEWAY_CLIENT_INFO,
        )
        request_id = f"gateway-discover-{uuid.uuid4().hex}"
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "server/discover",
            "params": {"_meta": sent.meta()},
        }
        probe = derived_context(
            ctx,
            message,
            protocol_version=sent.protocol_version,
            backend_session_id=None,
            envelope=sent,
        )
        messages = await read_messages(await call_next(probe))
        if not isinstance(probe.attributes.get(BACKEND_STATUS), int):
            return None, None
        result = result_of(messages, request_id)
        versions = result.get("supportedVersions") if result is not None else None
        if (
            result is not None
            and isinstance(versions, list)
            and any(v in STATELESS_VERSIONS for v in versions)
        ):
            self._record_probe(ctx.backend_name, True)
            return "stateless", Discovery.from_result(result)
        self._record_probe(ctx.backend_name, False)
        return "handshake", None
