"""Typed events: the base Struct and the tagged union of its subclasses."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any, Union

import msgspec


def new_event_id() -> str:
    """Return a new event id: a UUIDv7-style, time-ordered, 32-hex-digit string.

    Ids sort by creation time, which keeps journals and de-duplication simple.
    """
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80 | (0x7 << 76) | (rand & ((1 << 76) - 1))
    return f"{value:032x}"


def utc_now() -> str:
    """Return the current time as RFC 3339 in UTC with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Event(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="type"):
    """The base of every event published on a bus.

    Subclasses are named in the past tense; msgspec tags each encoded event
    with its class name in the ``type`` field.

    Attributes:
        id: Unique, time-ordered id, stable across redelivery for de-duplication.
        time: When the event was created, RFC 3339 in UTC.
        request_id: The request that caused the event, or None outside one.
        trace_id: The W3C trace id (32 hex digits), or None without a trace.
        span_id: The span current at publication (16 hex digits), or None.
        stage: The stage or component that published the event.
    """

    id: str = msgspec.field(default_factory=new_event_id)
    time: str = msgspec.field(default_factory=utc_now)
    request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    stage: str | None = None


def event_union(base: type[Event]) -> Any:
    """Return the tagged union of ``base`` and every concrete subclass of it.

    The union is computed when called, so subclasses defined by plug-ins must
    be imported first.
    """
    classes: list[type[Event]] = []
    pending: list[type[Event]] = [base]
    while pending:
        cls = pending.pop()
        if cls not in classes:
            classes.append(cls)
        pending.extend(cls.__subclasses__())
    # The marker is looked up on the class itself: subclasses of an abstract
    # event are concrete unless they set it again.
    concrete = [c for c in classes if not c.__dict__.get("__abstract_event__", False)]
    return Union[tuple(concrete)]  # noqa: UP007 - built at run time
