"""An append-only, bounded, on-disk journal for durable event delivery."""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

import anyio
import structlog

FsyncPolicy = Literal["always", "never"]

PRIVATE_MODE = 0o600
"""Mode of the files a journal creates: entries are audit records."""

EntryFactory = Callable[[bytes | None], bytes]
"""Builds an entry from the journal's newest entry (None when it has none)."""

log = structlog.get_logger("pipeline.journal")

_TAIL_CHUNK = 64 * 1024


class Journal:
    """Events that a durable subscriber has not yet delivered, kept on disk.

    :meth:`append` writes the encoded event to the journal file before it
    returns, so a crash after a request completed cannot lose its events. The
    delivering task reads with :meth:`peek` and acknowledges with :meth:`commit`;
    the committed offset is kept in a side file, so a restart redelivers exactly
    the entries that were not acknowledged.

    When ``max_pending`` entries wait for delivery, :meth:`append` blocks until
    the subscriber catches up: back-pressure instead of loss.

    The newest entry, delivered or not, stays readable as :attr:`last_entry`,
    also after a compaction and a restart, so that a stream whose entries
    refer to their predecessor (a hash chain) continues where it stopped.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_pending: int = 10_000,
        fsync: FsyncPolicy = "never",
        compact_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        self._offset_path = path.with_suffix(path.suffix + ".offset")
        self._pending: deque[tuple[int, bytes]] = deque()
        self._last: bytes | None = None
        self._changed = anyio.Event()
        self._space = anyio.Event()
        self._stale_offset: int | None = None
        self._unbounded = False
        self._file = self._open()
        self._offset_file = self._open_offset()
        if self._stale_offset is not None:
            self._write_offset(self._stale_offset)

    @property
    def pending(self) -> int:
        """The number of entries not yet acknowledged."""
        return len(self._pending)

    @property
    def last_entry(self) -> bytes | None:
        """The newest entry appended, delivered or not; None for a new journal."""
        return self._last

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        committed = 0
        if self._offset_path.exists():
            text = self._offset_path.read_text().strip()
            committed = int(text) if text.isdigit() else 0
        if self.path.exists():
            size = drop_partial_line(self.path)
            if committed > size:
                # A crash during a compaction leaves the offset past the end.
                # Kept, it would hide the entries appended from now on.
                committed = size
                self._stale_offset = size
            with self.path.open("rb") as fh:
                fh.seek(committed)
                offset = committed
                for line in fh:
                    offset += len(line)
                    self._pending.append((offset, line[:-1]))
            if self._pending:
                self._last = self._pending[-1][1]
            else:
                self._last = read_last_line(self.path)
        return _open_private(self.path, os.O_WRONLY | os.O_APPEND, "ab")

    def _open_offset(self) -> BinaryIO:
        # Kept open and rewritten in place by _write_offset. Not in append
        # mode, where Linux would make pwrite append.
        fd = os.open(self._offset_path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        handle = open(fd, "r+b", buffering=0)  # noqa: SIM115 - closed in close()
        self._offset_length = os.fstat(fd).st_size
        return handle

    def _write_offset(self, end: int) -> None:
        # Rewriting the side file in place takes one system call.
        # Path.write_text opened it with O_TRUNC per batch, which cost about
        # 0.14 ms of CPU on ext4 (closing a truncated file starts writeback)
        # and was the largest single cost of audit delivery. Offsets only
        # grow, so the new text covers the old one. After a compaction the
        # text gets shorter, so the file is emptied first. A crash in between
        # leaves it empty, which reads as offset 0.
        data = str(end).encode("ascii")
        fd = self._offset_file.fileno()
        if len(data) < self._offset_length:
            os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._offset_length = len(data)

    @property
    def full(self) -> bool:
        """Whether an append would wait: ``max_pending`` entries are pending."""
        return len(self._pending) >= self.max_pending and not self._unbounded

    async def wait_for_space(self) -> None:
        """Wait until an entry can be appended without exceeding ``max_pending``.

        Returns at once when the journal has space or :meth:`lift_bound` was
        called.
        """
        while self.full:
            self._space = anyio.Event() if self._space.is_set() else self._space
            await self._space.wait()

    def lift_bound(self) -> None:
        """Let appends exceed ``max_pending`` from now on, and wake the waiters.

        Used on shutdown, so that events still waiting for space are
        journaled, to be delivered after the restart, instead of lost.
        """
        self._unbounded = True
        self._space.set()

    async def append(self, data: bytes | EntryFactory) -> None:
        """Write one entry; wait while the journal is full.

        Args:
            data: One encoded event with no newline in it, or a function that
                builds it from :attr:`last_entry`. The function runs after any
                wait for space and before the next entry is appended, so
                concurrent appends each see their true predecessor.
        """
        await self.wait_for_space()
        self.append_nowait(data if isinstance(data, bytes) else data(self._last))

    def append_nowait(self, entry: bytes) -> None:
        """Write one entry now, even when the journal is full.

        The caller enforces the bound, as :class:`~pipeline.bus.EventBus`
        does with :meth:`wait_for_space`. With fsync ``always`` the entry is
        on disk when this returns.
        """
        self._file.write(entry + b"\n")
        self._file.flush()
        if self.fsync == "always":
            os.fsync(self._file.fileno())
        self._pending.append((self._file.tell(), entry))
        self._last = entry
        self._changed.set()

    def peek(self, limit: int) -> list[bytes]:
        """Return up to ``limit`` of the oldest unacknowledged entries."""
        return [data for _, data in itertools.islice(self._pending, limit)]

    async def wait(self) -> None:
        """Wait until at least one entry is pending."""
        while not self._pending:
            self._changed = anyio.Event()
            await self._changed.wait()

    def commit(self, count: int) -> None:
        """Acknowledge the ``count`` oldest entries as delivered."""
        if count <= 0:
            return
        end = 0
        for _ in range(min(count, len(self._pending))):
            end, _data = self._pending.popleft()
        self._write_offset(end)
        if not self._pending and end >= self.compact_bytes:
            self._compact()
        self._space.set()

    def _compact(self) -> None:
        # Everything is delivered, so the file starts over with only the
        # newest entry, already acknowledged, which keeps last_entry across
        # a restart. The new file replaces the old one atomically before the
        # offset moves back: a crash in between leaves an offset past the
        # end, which _open clamps, and never one that redelivers entries.
        self._file.close()
        kept = b"" if self._last is None else self._last + b"\n"
        fresh = self.path.with_suffix(self.path.suffix + ".compact")
        with _open_private(fresh, os.O_WRONLY | os.O_TRUNC, "wb") as fh:
            fh.write(kept)
        os.replace(fresh, self.path)
        self._write_offset(len(kept))
        self._file = _open_private(self.path, os.O_WRONLY | os.O_APPEND, "ab")

    def close(self) -> None:
        """Close the journal file and its offset file."""
        self._file.close()
        self._offset_file.close()


def read_last_line(path: Path) -> bytes | None:
    """Return the last newline-terminated line of a file, without its newline.

    Returns None when the file is missing or has no complete line. Reads
    the file backwards, so the cost does not grow with its size.
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return None
    with fh:
        end = fh.seek(0, os.SEEK_END)
        # Skip a trailing partial line: it was never completely written.
        tail = b""
        position = end
        while position > 0:
            start = max(0, position - _TAIL_CHUNK)
            fh.seek(start)
            tail = fh.read(position - start) + tail
            position = start
            last_newline = tail.rfind(b"\n")
            if last_newline < 0:
                continue
            previous_newline = tail.rfind(b"\n", 0, last_newline)
            if previous_newline >= 0 or position == 0:
                return tail[previous_newline + 1 : last_newline]
        return None


def drop_partial_line(path: Path) -> int:
    """Cut a trailing line that has no newline; return the new file size.

    A crash in the middle of a write can leave such a line. Appending after
    it would glue the next entry to it and corrupt both.
    """
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return size
        position = size
        while position > 0:
            start = max(0, position - _TAIL_CHUNK)
            fh.seek(start)
            chunk = fh.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                valid = start + newline + 1
                break
            position = start
        else:
            valid = 0
        fh.truncate(valid)
    log.warning(
        "journal.partial_entry_dropped", path=str(path), dropped_bytes=size - valid
    )
    return valid


def _open_private(path: Path, flags: int, mode: Literal["ab", "wb"]) -> BinaryIO:
    """Open ``path`` for writing, creating it readable by its owner only.

    An existing file keeps its mode, so an operator's choice is kept.
    """
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_MODE)
    return open(fd, mode)
