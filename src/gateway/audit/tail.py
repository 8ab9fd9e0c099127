"""Reading and following audit JSON-lines files (``agent-proxy audit tail``)."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from gateway.audit.sinks import rotated_set

_CHUNK = 64 * 1024
_decoder = msgspec.json.Decoder()


@dataclass(frozen=True)
class EventFilter:
    """A filter of events; an empty set lets every value through.

    Within one field any listed value matches; all fields must match.

    Attributes:
        users: User subjects (``user.sub``).
        agents: Agent ids (``agent.id``).
        backends: Backend names.
        outcomes: ``success``, ``denied`` or ``error``.
        types: Event types, such as ``AccessDenied``.
    """

    users: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    backends: frozenset[str] = frozenset()
    outcomes: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def matches(self, event: dict[str, Any]) -> bool:
        """Return whether ``event`` (a decoded record) passes every field."""
        user = event.get("user") or {}
        agent = event.get("agent") or {}
        checks = (
            (self.users, user.get("sub")),
            (self.agents, agent.get("id")),
            (self.backends, event.get("backend")),
            (self.outcomes, event.get("outcome")),
            (self.types, event.get("type")),
        )
        return all(not wanted or value in wanted for wanted, value in checks)


def decode(line: bytes) -> dict[str, Any] | None:
    """Return a record as a dict, or None when the line is not a JSON object."""
    try:
        value = _decoder.decode(line)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def format_text(event: dict[str, Any]) -> str:
    """Return one line for people: time, type, outcome and the known fields."""
    user = event.get("user") or {}
    agent = event.get("agent") or {}
    fields = {
        "user": user.get("sub"),
        "agent": agent.get("id"),
        "backend": event.get("backend"),
        "method": event.get("method"),
        "tool": event.get("tool"),
        "reason": event.get("reason"),
        "request": event.get("request_id"),
        "trace": event.get("trace_id"),
    }
    known = " ".join(f"{key}={value}" for key, value in fields.items() if value)
    head = f"{event.get('time', '-')} {event.get('type', '-'):<22} "
    return head + f"{event.get('outcome', '-'):<7} {known}".rstrip()


def last_lines(path: Path, count: int, keep: EventFilter) -> tuple[list[bytes], int]:
    """Return the last ``count`` matching lines of ``path``'s rotated set.

    Files are read backwards, newest first, and only as far as needed.

    Returns:
        The lines, oldest first, and the size of ``path`` when it was read,
        from where :func:`follow_lines` continues.
    """
    size = _complete_end(path)
    found: deque[bytes] = deque()
    if count <= 0:
        return [], size
    for index, member in enumerate(reversed(rotated_set(path))):
        end = size if index == 0 and member == path else None
        for line in _reverse_lines(member, end):
            event = decode(line)
            if event is not None and keep.matches(event):
                found.appendleft(line)
                if len(found) == count:
                    return list(found), size
    return list(found), size


def follow_lines(
    path: Path,
    start: int,
    *,
    stop: threading.Event,
    poll_interval: float = 0.2,
) -> Iterator[bytes]:
    """Yield each complete line appended to ``path`` from byte ``start`` on.

    Follows the file across rotation: when ``path`` is renamed and a new file
    takes its name, the rest of the old file is read, then the new one from
    its start. A file truncated below the read position is read again from
    its start. Returns once ``stop`` is set.
    """
    handle: BinaryIO | None = None
    inode: int | None = None
    partial = b""
    while not stop.is_set():
        if handle is None:
            handle, inode = _open(path, start)
            start = 0
            partial = b""
        if handle is None:
            stop.wait(poll_interval)
            continue
        data = handle.read(_CHUNK)
        if data:
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            yield from (line for line in lines if line)
            continue
        if _replaced(path, inode):
            # Whatever the writer added before the rename was read above.
            handle.close()
            handle = None
            continue
        if path.exists() and path.stat().st_size < handle.tell():
            handle.seek(0)
            partial = b""
            continue
        stop.wait(poll_interval)
    if handle is not None:
        handle.close()


def select(
    lines: Iterable[bytes], keep: EventFilter
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Yield each line of ``lines`` that ``keep`` matches, with its record."""
    for line in lines:
        event = decode(line)
        if event is not None and keep.matches(event):
            yield line, event


def _open(path: Path, start: int) -> tuple[BinaryIO | None, int | None]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None, None
    size = os.fstat(handle.fileno()).st_size
    handle.seek(start if start <= size else 0)
    return handle, os.fstat(handle.fileno()).st_ino


def _replaced(path: Path, inode: int | None) -> bool:
    try:
        return path.stat().st_ino != inode
    except FileNotFoundError:
        return True


def _reverse_lines(path: Path, end: int | None) -> Iterator[bytes]:
    """Yield the complete lines of ``path`` before byte ``end``, last first."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        position = handle.seek(0, os.SEEK_END) if end is None else end
        buffer = b""
        while position > 0:
            start = max(0, position - _CHUNK)
            handle.seek(start)
            buffer = handle.read(position - start) + buffer
            position = start
            lines = buffer.split(b"\n")
            # The first piece may continue in the previous chunk.
            buffer = lines.pop(0) if position > 0 else b""
            for line in reversed(lines):
                if line:
                    yield line
        if buffer:
            yield buffer


def _complete_end(path: Path) -> int:
    """Return the offset just past the last newline of ``path`` (0 if none).

    A line still being written is left for :func:`follow_lines`.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0
    with handle:
        position = handle.seek(0, os.SEEK_END)
        while position > 0:
            start = max(0, position - _CHUNK)
            handle.seek(start)
            newline = handle.read(position - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            position = start
    return 0
