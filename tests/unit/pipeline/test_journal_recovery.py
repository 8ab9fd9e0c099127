"""Journal recovery after a crash: partial entries, stale offsets, the last entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import Journal
from pipeline.journal import read_last_line

pytestmark = pytest.mark.anyio


async def test_journal_partial_entry_dropped_on_open(tmp_path: Path) -> None:
    """An entry cut short by a crash is removed, so the next one starts a new line."""
    path = tmp_path / "audit.journal"
    path.write_bytes(b'{"n":0}\n{"n":1}\n{"n":')
    journal = Journal(path)
    assert journal.peek(10) == [b'{"n":0}', b'{"n":1}']
    await journal.append(b'{"n":2}')
    journal.close()
    assert path.read_bytes() == b'{"n":0}\n{"n":1}\n{"n":2}\n'


async def test_journal_offset_past_end_is_clamped(tmp_path: Path) -> None:
    """An offset beyond the file (a crash inside a compaction) loses no new entry."""
    path = tmp_path / "audit.journal"
    path.write_bytes(b'{"n":9}\n')
    path.with_suffix(".journal.offset").write_text("4096")
    journal = Journal(path)
    assert journal.pending == 0
    await journal.append(b'{"n":10}')
    journal.close()

    reopened = Journal(path)
    assert reopened.peek(10) == [b'{"n":10}']
    reopened.close()


async def test_journal_append_factory_sees_previous_entry(tmp_path: Path) -> None:
    """A factory entry is built from the newest entry, also after a restart."""
    path = tmp_path / "audit.journal"
    journal = Journal(path)
    await journal.append(lambda previous: b"first" if previous is None else b"bad")
    await journal.append(lambda previous: (previous or b"") + b"+1")
    journal.commit(2)
    journal.close()

    reopened = Journal(path)
    assert reopened.last_entry == b"first+1"
    await reopened.append(lambda previous: (previous or b"") + b"+2")
    assert reopened.peek(5) == [b"first+1+2"]
    reopened.close()


def test_read_last_line_spans_chunks(tmp_path: Path) -> None:
    """The last complete line is found when it is longer than one read chunk."""
    path = tmp_path / "big.jsonl"
    long_line = b"x" * 200_000
    path.write_bytes(b"first\n" + long_line + b"\npartial")
    assert read_last_line(path) == long_line
    path.write_bytes(b"only\n")
    assert read_last_line(path) == b"only"
    path.write_bytes(b"no newline")
    assert read_last_line(path) is None
    assert read_last_line(tmp_path / "absent") is None
