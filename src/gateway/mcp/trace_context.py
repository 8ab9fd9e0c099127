"""W3C trace context of an MCP message: HTTP headers and ``params._meta``.

A client can send its trace context in two carriers: the ``traceparent`` and
``tracestate`` HTTP headers, and the same keys (and ``baggage``) in the
message's ``params._meta``. MCP documents the ``_meta`` keys for every
protocol revision (SEP-414), and the OpenTelemetry MCP semantic conventions
ask servers to use them. The official Python SDK (mcp 2.3.0) sends them from
its client and reads them in its server, in both protocol eras.

When both carriers hold a valid ``traceparent``, ``_meta`` wins and the
header's span becomes a link, as the OpenTelemetry MCP conventions
recommend. The ``_meta`` context belongs to the MCP message and the header
context to the HTTP request that carried it, which is a child of it when
the client instruments its HTTP client. A malformed or all-zero
``traceparent`` in either carrier is ignored, so that the request starts a
new trace instead of failing. A malformed ``tracestate`` or ``baggage`` is
dropped and leaves a valid ``traceparent`` in use.

The OpenTelemetry propagators log a warning for each malformed value they
drop, and that record goes through the log processors. Extraction therefore
never runs inside itself: a nested call returns an empty context (see
:func:`extract_context`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link

META_KEYS: Final = ("traceparent", "tracestate", "baggage")
"""The ``params._meta`` keys of W3C Trace Context and Baggage, unprefixed."""

_extracting: ContextVar[bool] = ContextVar("trace_context_extracting", default=False)


def extract_context(carrier: Mapping[str, str]) -> Context:
    """Parse the W3C trace context and baggage of ``carrier``, once per call.

    The propagators that OpenTelemetry is configured with do the parsing
    (W3C Trace Context and Baggage unless ``OTEL_PROPAGATORS`` names
    others). A call made while another is parsing in the same task or
    thread (from a log handler that the propagator's warning reached, for
    one) returns an empty context instead of parsing again, so a malformed
    header cannot make parsing and logging call each other without end.

    Args:
        carrier: Headers or ``_meta`` keys, with lower-case names.

    Returns:
        The extracted context; it has no span when ``traceparent`` is absent
        or malformed.
    """
    if _extracting.get():
        return Context()
    token = _extracting.set(True)
    try:
        return propagate.extract(carrier, context=Context())
    finally:
        _extracting.reset(token)


def meta_carrier(params: Mapping[str, Any]) -> dict[str, str]:
    """Return the trace context keys of ``params._meta`` whose values are strings."""
    meta = params.get("_meta")
    if not isinstance(meta, Mapping):
        return {}
    carrier: dict[str, str] = {}
    for key in META_KEYS:
        value = meta.get(key)
        if isinstance(value, str):
            carrier[key] = value
    return carrier


def parent_context(
    headers: Mapping[str, str],
    params: Mapping[str, Any] | None = None,
    *,
    header_context: Context | None = None,
) -> tuple[Context, list[Link]]:
    """Return the parent context of a request's server span, and its links.

    Args:
        headers: The request headers, with lower-case names.
        params: The message's params, or None before the body is parsed.
        header_context: The context already extracted from ``headers``,
            which are then not parsed again.

    Returns:
        The ``_meta`` context when it contains a valid span, with a link to the
        header's span when that is valid and different; else the header
        context, which has no span (a new trace) when the header is absent
        or malformed.
    """
    if header_context is None:
        header_context = extract_context(headers)
    if params is None:
        return header_context, []
    carrier = meta_carrier(params)
    if "traceparent" not in carrier:
        return header_context, []
    meta_context = extract_context(carrier)
    meta_span = trace.get_current_span(meta_context).get_span_context()
    if not meta_span.is_valid:
        return header_context, []
    header_span = trace.get_current_span(header_context).get_span_context()
    links: list[Link] = []
    if header_span.is_valid and header_span.span_id != meta_span.span_id:
        links.append(Link(header_span))
    return meta_context, links


def with_trace_meta(data: dict[str, Any]) -> dict[str, Any]:
    """Return a request or notification with the current trace context in ``_meta``.

    The keys the client sent in ``params._meta`` are replaced by the context
    of the current span, so the gateway's span becomes the backend's
    parent, and a malformed value never reaches the backend. Other ``_meta`` keys
    (the 2026-07-28 envelope, ``progressToken``) stay. ``data`` is not
    changed; it is returned itself when there is nothing to add or remove,
    or when its ``params`` is not an object.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    params = data.get("params")
    if params is not None and not isinstance(params, dict):
        return data
    meta = params.get("_meta") if params is not None else None
    stale = isinstance(meta, dict) and any(key in meta for key in META_KEYS)
    if not carrier and not stale:
        return data
    new_meta: dict[str, Any] = {}
    if isinstance(meta, dict):
        new_meta = {k: v for k, v in meta.items() if k not in META_KEYS}
    elif meta is not None:
        # A _meta that is not an object is passed on for the backend to judge.
        return data
    new_meta.update(carrier)
    new_params = dict(params) if params is not None else {}
    if new_meta:
        new_params["_meta"] = new_meta
    else:
        new_params.pop("_meta", None)
    return {**data, "params": new_params}
