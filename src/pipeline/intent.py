"""The record of one event's appends to several journals, written before them.

The bus appends each event to every durable subscriber's journal, one file
after the other. A crash between two of those writes would leave journals
that disagree forever: one sink would never receive an event the others
have. So the bus first writes the set of entries to an :class:`IntentLog`,
then appends them. After a crash, the entries of the last set that a
journal lacks are appended on restart (:meth:`EventBus.attach_intent_log
<pipeline.bus.EventBus.attach_intent_log>`).

The file holds only the newest set and is rewritten in place. Its layout is a
header line, ``<sha256 of the body, hex> <body length>``, then the body: one
line per journal, ``<subscriber name> TAB <entry>``. A write cut short by a
crash fails the checksum and reads as no record, which is correct because
the journals are appended only after the write completes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from pipeline.journal import PRIVATE_MODE, FsyncPolicy

log = structlog.get_logger("pipeline.intent")


class IntentLog:
    """The entries of the newest event the bus appended, kept in one file.

    Args:
        path: The file; created with mode 0600 when missing.
        fsync: ``always`` flushes each record to disk before the journals
            are appended, which the journals' own ``always`` policy needs
            to survive a power loss as well as a crash of the process.
    """

    def __init__(self, path: Path, *, fsync: FsyncPolicy = "never") -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)

    def read(self) -> list[tuple[str, bytes]]:
        """Return the newest record's entries by subscriber name.

        Returns an empty list when the file is empty or its record is
        incomplete or damaged.
        """
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        header, newline, rest = data.partition(b"\n")
        digest, _space, length_text = header.partition(b" ")
        if not newline or not length_text.isdigit():
            return []
        body = rest[: int(length_text)]
        if len(body) != int(length_text):
            return []
        if hashlib.sha256(body).hexdigest().encode("ascii") != digest:
            log.warning("intent.record_damaged", path=str(self.path))
            return []
        entries: list[tuple[str, bytes]] = []
        for line in body.split(b"\n")[:-1]:
            name, _tab, entry = line.partition(b"\t")
            entries.append((name.decode("utf-8"), entry))
        return entries

    def write(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Replace the record with ``entries``: (subscriber name, entry) pairs.

        Names contain no tab or newline and entries no newline. The file is
        not truncated: the header's length marks where the record ends.
        """
        body = b"".join(
            name.encode("utf-8") + b"\t" + entry + b"\n" for name, entry in entries
        )
        digest = hashlib.sha256(body).hexdigest().encode("ascii")
        os.pwrite(self._fd, digest + b" %d\n" % len(body) + body, 0)
        if self.fsync == "always":
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)
