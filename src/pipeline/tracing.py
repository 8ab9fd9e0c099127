"""Helpers for reading the current trace context."""

from __future__ import annotations

from opentelemetry import trace


def current_ids() -> tuple[str | None, str | None]:
    """Return the current ``(trace_id, span_id)`` as hex, or Nones without a span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
