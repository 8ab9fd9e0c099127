"""Checking the hash chain of audit JSON-lines files (``agent-proxy audit verify``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.audit.chain import canonical_form, record_hash
from gateway.audit.sinks import rotated_set

_decoder = msgspec.json.Decoder()


@dataclass(frozen=True)
class ChainBreak:
    """The first place where a chain does not hold.

    Attributes:
        path: The file.
        line: The line number in that file, from 1.
        message: What is wrong, in a sentence.
    """

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class ChainReport:
    """The result of checking one stream of files.

    Attributes:
        files: The files checked, in stream order.
        records: Records read before the first break, or all of them.
        head: The hash of the last record read, which a later check can
            compare to detect records cut from the end.
        anchor: The first record's ``prev_hash``: None when the stream starts
            there, else the hash of a record in a file not checked (such as
            a rotated file already deleted).
        problem: The first break, or None when the chain holds.
    """

    files: list[Path] = field(default_factory=list)
    records: int = 0
    head: str | None = None
    anchor: str | None = None
    problem: ChainBreak | None = None


def expand(paths: Iterable[Path]) -> list[Path]:
    """Return the files to check: each path preceded by its rotated backups.

    A path with backups (``audit.jsonl.1``, ...) stands for its whole
    rotated set, oldest first. A missing path is kept, so that the check
    reports it.
    """
    files: list[Path] = []
    for path in paths:
        members = rotated_set(path)
        for member in members or [path]:
            if member not in files:
                files.append(member)
    return files


def verify_chain(files: list[Path]) -> ChainReport:
    """Check that ``files``, read in order, form one unbroken hash chain.

    Each line must be one JSON object in canonical form whose ``prev_hash``
    is the SHA-256 of the line before it. The first line's ``prev_hash`` is
    taken as given (see :attr:`ChainReport.anchor`).

    Raises:
        OSError: A file cannot be read.
    """
    report = ChainReport(files=files)
    previous: bytes | None = None
    previous_at = ""
    for path in files:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                problem = _check_line(raw, previous)
                if problem is not None:
                    if previous is not None:
                        problem += f" (the previous record is {previous_at})"
                    report.problem = ChainBreak(path, number, problem)
                    return report
                record = raw[:-1]
                if report.records == 0:
                    report.anchor = _decoder.decode(record).get("prev_hash")
                report.records += 1
                report.head = record_hash(record)
                previous = record
                previous_at = f"{path}:{number}"
    return report


def _check_line(raw: bytes, previous: bytes | None) -> str | None:
    """Return what is wrong with one line, or None.

    ``previous`` is the record before it, None for the stream's first line.
    """
    if not raw.endswith(b"\n"):
        return "the line is incomplete (no newline at its end)"
    record = raw[:-1]
    try:
        decoded: Any = _decoder.decode(record)
    except msgspec.DecodeError:
        return "the line is not valid JSON"
    if not isinstance(decoded, dict):
        return "the line is not a JSON object"
    if "prev_hash" not in decoded:
        return "the record has no prev_hash field"
    if canonical_form(record) != record:
        return (
            "the record is not in canonical form (keys sorted, no whitespace), "
            "so it was rewritten after the gateway wrote it"
        )
    prev_hash = decoded["prev_hash"]
    if previous is None:
        return None
    if prev_hash is None:
        return (
            "prev_hash is null in the middle of the stream: a new chain starts "
            "here, so the records before it were replaced or the journal lost"
        )
    if prev_hash != record_hash(previous):
        return (
            "prev_hash does not match the line before it: that line was "
            "changed, or lines between the two were removed or inserted"
        )
    return None
