"""Span attribute names of the gateway's own, and how spans name a user.

Attributes that an OpenTelemetry semantic convention defines use its names
(``mcp.method.name``, ``http.response.status_code``, ...). Everything the
conventions do not cover is under the ``agent_proxy.`` prefix, listed here so
that the operator guide, the code and the tests use one spelling.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

BACKEND: Final = "agent_proxy.backend"
"""The configured name of the backend a request is for."""
REQUEST_ID: Final = "agent_proxy.request_id"
"""The gateway's request id, also sent to the client as ``X-Request-Id``."""
AGENT_ID: Final = "agent_proxy.agent.id"
"""The agent's name in config, or ``default`` for an unmatched client."""
AGENT_TRUST: Final = "agent_proxy.agent.trust"
"""``verified``, ``self-asserted`` or ``unknown``."""
USER_ISS: Final = "agent_proxy.user.iss"
"""The user's issuer, with ``telemetry.user_identifiers: plain``."""
USER_SUB: Final = "agent_proxy.user.sub"
"""The user's subject, with ``telemetry.user_identifiers: plain``."""
USER_HASH: Final = "agent_proxy.user.hash"
"""SHA-256 of ``"<iss> <sub>"`` in hex, with ``user_identifiers: hashed``."""
EXCHANGE_CACHE: Final = "agent_proxy.exchange.cache"
"""The source of an ID-JAG backend token: ``hit``, ``miss`` or
``shared-in-flight`` (the request waited for another request's exchange)."""
STREAM_MS: Final = "agent_proxy.stream_ms"
"""Milliseconds spent sending the response body to the client."""
CLIENT_DISCONNECTED: Final = "agent_proxy.client_disconnected"
"""True when the client left before its response was complete."""
COMPONENT: Final = "agent_proxy.component"
"""The embedded server that made a span (``devidp``, ``employees``, ...),
because the demo exports all of them under one ``service.name``."""

UserIdentifiers = Literal["hashed", "plain", "omit"]


def user_attributes(iss: str, sub: str, mode: UserIdentifiers) -> dict[str, str]:
    """Return the span attributes that name a user, as ``mode`` allows.

    ``hashed`` gives a pseudonym, not anonymity: anyone with a user's issuer
    and subject can compute it, which is what lets an operator find that
    user's traces. ``omit`` gives no attribute at all.
    """
    if mode == "plain":
        return {USER_ISS: iss, USER_SUB: sub}
    if mode == "hashed":
        digest = hashlib.sha256(f"{iss} {sub}".encode()).hexdigest()
        return {USER_HASH: digest}
    return {}
