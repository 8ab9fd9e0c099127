"""The journal's offset side file, rewritten in place on every commit."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from pipeline import Journal


def offset_text(path: Path) -> str:
    return path.with_suffix(path.suffix + ".offset").read_text()


@pytest.mark.anyio
async def test_journal_commit_writes_offset(tmp_path: Path) -> None:
    """Each commit leaves exactly the committed byte offset in the side file."""
    path = tmp_path / "audit.journal"
    journal = Journal(path)
    for n in range(12):
        await journal.append(msgspec.json.encode({"n": n}))
    journal.commit(1)
    assert offset_text(path) == "8"
    journal.commit(2)
    assert offset_text(path) == "24"
    journal.commit(9)
    assert offset_text(path) == str(path.stat().st_size)
    journal.close()
    assert Journal(path).pending == 0


@pytest.mark.anyio
async def test_journal_compaction_keeps_last_entry(tmp_path: Path) -> None:
    """A compaction keeps only the newest entry, acknowledged, across a restart."""
    path = tmp_path / "audit.journal"
    journal = Journal(path, compact_bytes=16)
    for n in range(200):
        await journal.append(msgspec.json.encode({"n": n}))
    journal.commit(200)
    assert path.read_bytes() == b'{"n":199}\n'
    assert offset_text(path) == "10"
    for n in (200, 201):
        await journal.append(msgspec.json.encode({"n": n}))
    journal.commit(1)
    assert offset_text(path) == "20"
    journal.close()

    reopened = Journal(path)
    assert [msgspec.json.decode(e)["n"] for e in reopened.peek(10)] == [201]
    assert reopened.last_entry == b'{"n":201}'
    reopened.commit(1)
    reopened.close()
    assert Journal(path).last_entry == b'{"n":201}'
