"""Reading and following audit JSON-lines files (``agent-proxy audit tail``)."""

from __future__ import annotations

import os
import threading
import unicodedata
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
    """Return one line for people: time, type, outcome and the known fields.

    Every value is passed through :func:`escape_text`, so a value a client
    chose (a method or tool name) cannot move the cursor, rewrite the line or
    send terminal commands. A value with a space, a double quote or an equals
    sign is printed in double quotes, so it cannot look like another field.
    """
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
    known = " ".join(
        f"{key}={_field_value(value)}" for key, value in fields.items() if value
    )
    time = escape_text(event.get("time", "-"))
    kind = escape_text(event.get("type", "-"))
    outcome = escape_text(event.get("outcome", "-"))
    return f"{time} {kind:<22} {outcome:<7} {known}".rstrip()


_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories escaped in text output: control (C0, C1 and DEL),
format (bidirectional overrides, zero-width characters), surrogates, and
the line and paragraph separators."""


def escape_text(value: object) -> str:
    r"""Return ``value`` as text with no character a terminal acts on.

    Control, format and line-separator characters become ``\xNN``,
    ``\uNNNN`` or ``\UNNNNNNNN`` escapes, and a backslash becomes two, so an
    escape in the output always stands for one character of the value.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) not in _UNPRINTABLE:
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _field_value(value: object) -> str:
    text = escape_text(value)
    if any(char in text for char in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


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

    Follows the file across rotation. The file being read is tracked by its
    inode. When ``path`` is renamed to ``path.1`` and a new file takes its
    name, the rest of the old file is read, then each newer file of the
    rotated set in turn, each from its start. After two rotations between
    polls that is ``path.2``, then ``path.1``, then ``path``. A file truncated below the
    read position is read again from its start. Returns once ``stop`` is set.

    Lines are lost only when the files after the one being read are deleted
    before they are read, which takes more rotations between two polls than
    the sink keeps backups.
    """
    handle: BinaryIO | None = None
    inode: int | None = None
    partial = b""
    read_inodes: deque[int] = deque(maxlen=64)
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
            assert inode is not None
            read_inodes.append(inode)
            successor = _open_successor(path, handle, read_inodes)
            handle.close()
            handle = successor
            inode = None if successor is None else os.fstat(successor.fileno()).st_ino
            partial = b""
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


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _open_successor(
    path: Path, current: BinaryIO, read_inodes: Iterable[int]
) -> BinaryIO | None:
    """Open the file of ``path``'s rotated set written after ``current``.

    ``current`` was renamed away from ``path``. When it is still in the set,
    as ``path.N``, its successor is ``path.N-1`` (``path`` for N = 1). The
    successor is opened by name, so the check that ``current`` is still
    ``path.N`` comes after the open: a rotation renames the older file
    first, so a name that moved in between shows as ``current`` having moved.

    When ``current`` is no longer in the set (its backup was deleted, or a
    tool renamed it otherwise), the successor is the oldest file of the set
    that was not read yet and was modified no earlier than ``current``.

    Returns:
        The successor, open at its start, or None when there is none yet.
    """
    status = os.fstat(current.fileno())
    for _attempt in range(10):
        members = rotated_set(path)
        position = next(
            (i for i, m in enumerate(members) if _inode(m) == status.st_ino), None
        )
        if position is None:
            break
        if position + 1 >= len(members):
            # ``current`` is ``path`` again (renamed back, or a race with
            # the rename): go on reading it where the reading stopped.
            again = members[position].open("rb")
            again.seek(current.tell())
            return again
        try:
            successor = members[position + 1].open("rb")
        except FileNotFoundError:
            continue
        if _inode(members[position]) == status.st_ino:
            return successor
        successor.close()
    seen = set(read_inodes)
    for member in rotated_set(path):
        try:
            member_status = member.stat()
        except FileNotFoundError:
            continue
        if member_status.st_ino in seen or member_status.st_ino == status.st_ino:
            continue
        if member_status.st_mtime_ns >= status.st_mtime_ns:
            try:
                return member.open("rb")
            except FileNotFoundError:
                continue
    return None


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
