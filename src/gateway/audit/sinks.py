"""The built-in audit sinks."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

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

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Append the batch; returns once it is written (and fsynced if set)."""
        data = b"".join(line + b"\n" for line in batch)
        await anyio.to_thread.run_sync(self._write, data)

    def _write(self, data: bytes) -> None:
        with self.path.open("ab") as fh:
            fh.write(data)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())


class StdoutSink:
    """Writes each event as one JSON line to standard output."""

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Write the batch to stdout."""
        out = sys.stdout.buffer
        out.write(b"".join(line + b"\n" for line in batch))
        out.flush()
