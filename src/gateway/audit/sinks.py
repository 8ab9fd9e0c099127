"""The built-in audit sinks."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import anyio


class JsonlSink:
    """Appends each event as one JSON line to a file.

    Delivery may repeat a batch after a failure; consumers de-duplicate by the
    event ``id``.
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = None

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Append the batch; returns once it is written (and fsynced if set).

        The write goes to the page cache inline, which takes microseconds;
        only an fsync, which can take milliseconds, runs in a worker thread.
        """
        data = b"".join(line + b"\n" for line in batch)
        if self._file is None or self._file.closed:
            self._file = self.path.open("ab")
        try:
            self._file.write(data)
            self._file.flush()
        except OSError:
            # Reopen on the next batch; the journal retries this one.
            self._file.close()
            raise
        if self.fsync:
            await anyio.to_thread.run_sync(os.fsync, self._file.fileno())

    def close(self) -> None:
        """Close the file; a later delivery opens it again."""
        if self._file is not None:
            self._file.close()


class StdoutSink:
    """Writes each event as one JSON line to standard output."""

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Write the batch to stdout."""
        out = sys.stdout.buffer
        out.write(b"".join(line + b"\n" for line in batch))
        out.flush()
