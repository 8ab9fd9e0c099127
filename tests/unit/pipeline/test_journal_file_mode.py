"""Permissions of the files a journal creates: its entries are audit records."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import Journal

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def common_umask() -> Iterator[None]:
    """Run with umask 022, under which plain file creation gives mode 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_journal_new_files_owner_only(tmp_path: Path, common_umask: None) -> None:
    """A new journal and its offset file are readable by their owner only."""
    path = tmp_path / "sink.journal"
    journal = Journal(path)
    await journal.append(b'{"id":"1"}')
    journal.close()
    assert mode(path) == 0o600
    assert mode(path.with_suffix(".journal.offset")) == 0o600


async def test_journal_compaction_keeps_owner_only(
    tmp_path: Path, common_umask: None
) -> None:
    """The file a compaction writes is as private as the one it replaces."""
    path = tmp_path / "sink.journal"
    journal = Journal(path, compact_bytes=1)
    await journal.append(b'{"id":"1"}')
    journal.commit(1)
    journal.close()
    assert mode(path) == 0o600
