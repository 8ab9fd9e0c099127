"""Spans of the ID-JAG exchange, and where a backend token came from.

A request that needs an exchange gets an ``exchange id-jag`` span, the child
of the ``exchange`` stage's span. Its children are the upstream refresh of
the user's ID token when one is due, ``idjag token_exchange`` and
``idjag jwt_bearer``, each with the HTTP client span of its token request.
Every ``id-jag`` request, exchange or not, sets ``agent_proxy.exchange.cache``
on the current span (the stage's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

from gateway.tracing_attributes import AGENT_ID, BACKEND, EXCHANGE_CACHE

_tracer = trace.get_tracer("gateway.exchange")

CacheResult = Literal["hit", "miss", "shared-in-flight"]


@contextmanager
def exchange_span(*, backend: str, audience: str, agent_id: str) -> Iterator[Span]:
    """Run one ID-JAG exchange inside its ``exchange id-jag`` span.

    A failure sets status ERROR and ``error.type`` to the error's ``reason``
    (such as ``reauthentication_required`` or ``idp_unavailable``), or its
    class name when it has none, and is raised again.
    """
    attributes = {
        BACKEND: backend,
        "oauth.audience": audience,
        AGENT_ID: agent_id,
        EXCHANGE_CACHE: "miss",
    }
    with _tracer.start_as_current_span(
        "exchange id-jag",
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            reason = getattr(exc, "reason", None)
            error_type = reason if isinstance(reason, str) else type(exc).__name__
            span.set_attribute("error.type", error_type)
            span.set_status(StatusCode.ERROR, error_type)
            raise


def cache_result(*, fetched_here: bool, cached_before: bool) -> CacheResult:
    """Classify a token lookup that succeeded.

    Args:
        fetched_here: This request ran the exchange that produced the token.
        cached_before: A usable token was in the cache when the lookup began.
    """
    if fetched_here:
        return "miss"
    return "hit" if cached_before else "shared-in-flight"


def record_cache_result(result: CacheResult) -> None:
    """Set ``agent_proxy.exchange.cache`` on the current span."""
    trace.get_current_span().set_attribute(EXCHANGE_CACHE, result)
