"""The local audit sinks: a rotated JSON-lines file and standard output."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import anyio
import structlog

from gateway.audit.chain import record_hash
from pipeline.journal import drop_partial_line, read_last_line

log = structlog.get_logger("gateway.audit")


def open_owner_only(path: Path) -> BinaryIO:
    """Open ``path`` for appending; a new file gets mode 0600 whatever the umask.

    Audit records name users and clients, so other local users must not read
    them. An existing file keeps the mode it has.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return open(fd, "ab")


def backup_path(path: Path, number: int) -> Path:
    """Return the name of rotated file ``number`` of ``path`` (1 is the newest)."""
    return path.with_name(f"{path.name}.{number}")


def rotated_set(path: Path) -> list[Path]:
    """Return ``path`` and its existing backups, oldest first.

    Backups are ``path.1``, ``path.2``, ... with no gap; ``path`` itself is
    listed last when it exists.
    """
    backups: list[Path] = []
    number = 1
    while backup_path(path, number).exists():
        backups.append(backup_path(path, number))
        number += 1
    files = list(reversed(backups))
    if path.exists():
        files.append(path)
    return files


def last_record(path: Path) -> bytes | None:
    """Return the newest complete line of ``path``, else of its newest backup."""
    for candidate in reversed(rotated_set(path)):
        line = read_last_line(candidate)
        if line is not None:
            return line
    return None


class JsonlSink:
    """Appends each event as one JSON line to a file, rotated by size.

    A batch delivered again after a failure or a restart is written only from
    the first record the file does not have yet, recognised by the hash
    chain, so the file contains each record once. A file is rotated before a
    line that would take it past ``max_bytes``; a single line longer than
    that still goes into one file.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = False,
        max_bytes: int = 0,
        backups: int = 10,
    ) -> None:
        self.path = path
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = None
        self._size = 0
        self._last_hash: str | None = None
        self._resync = True

    def last_record(self) -> bytes | None:
        """Return the newest record in the file or its backups, if any."""
        return last_record(self.path)

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Append the records of ``batch`` the file does not have yet.

        The write goes to the page cache inline, which takes microseconds;
        only an fsync, which can take milliseconds, runs in a worker thread.
        """
        if self._resync:
            self._read_state()
            batch = self._unwritten(batch)
        if not batch:
            return
        try:
            self._write(batch)
        except OSError:
            # The next delivery reads the file again to see what it holds.
            self._resync = True
            self.close()
            raise
        self._last_hash = record_hash(batch[-1])
        if self.fsync and self._file is not None:
            await anyio.to_thread.run_sync(os.fsync, self._file.fileno())

    def _read_state(self) -> None:
        self.close()
        if self.path.exists():
            # A line cut short by a crash or a full disk would be glued to the
            # next record; the journal delivers that record again.
            drop_partial_line(self.path)
        last = self.last_record()
        self._last_hash = None if last is None else record_hash(last)
        self._resync = False

    def _unwritten(self, batch: Sequence[bytes]) -> Sequence[bytes]:
        if self._last_hash is None:
            return batch
        for index, record in enumerate(batch):
            if record_hash(record) == self._last_hash:
                return batch[index + 1 :]
        return batch

    def _write(self, batch: Sequence[bytes]) -> None:
        if self._file is not None and not self._file.closed and self._moved():
            # Moved away by an outside tool such as logrotate: the chain goes
            # on in a new file at the configured path.
            self._file.close()
        chunk: list[bytes] = []
        chunk_size = 0
        for record in batch:
            line_size = len(record) + 1
            total = self._current_size() + chunk_size
            if self.max_bytes and total and total + line_size > self.max_bytes:
                self._append(chunk)
                chunk, chunk_size = [], 0
                self._rotate()
            chunk.append(record)
            chunk_size += line_size
        self._append(chunk)

    def _current_size(self) -> int:
        if self._file is None or self._file.closed:
            self._file = open_owner_only(self.path)
            self._size = self._file.tell()
        return self._size

    def _moved(self) -> bool:
        assert self._file is not None
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            return True
        return current != os.fstat(self._file.fileno()).st_ino

    def _append(self, records: list[bytes]) -> None:
        if not records:
            return
        self._current_size()
        assert self._file is not None
        data = b"".join(record + b"\n" for record in records)
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        if self._file is not None:
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
        oldest = backup_path(self.path, self.backups)
        deleted = oldest.exists()
        for number in range(self.backups - 1, 0, -1):
            source = backup_path(self.path, number)
            if source.exists():
                os.replace(source, backup_path(self.path, number + 1))
        os.replace(self.path, backup_path(self.path, 1))
        self._file = open_owner_only(self.path)
        self._size = 0
        log.info(
            "audit.file_rotated",
            path=str(self.path),
            backups=self.backups,
            oldest_deleted=deleted,
        )

    def close(self) -> None:
        """Close the file; a later delivery opens it again."""
        if self._file is not None:
            self._file.close()
            self._file = None


class StdoutSink:
    """Writes each event as one JSON line to standard output."""

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Write the batch to stdout."""
        out = sys.stdout.buffer
        out.write(b"".join(line + b"\n" for line in batch))
        out.flush()
