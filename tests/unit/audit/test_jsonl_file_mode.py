"""Permissions of the audit files the jsonl sink creates."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.sinks import JsonlSink, backup_path

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


async def test_jsonl_sink_new_file_owner_only(
    tmp_path: Path, common_umask: None
) -> None:
    """A new audit file is readable and writable by its owner only."""
    sink = JsonlSink(tmp_path / "audit.jsonl")
    await sink.deliver([b'{"id":"1"}'])
    sink.close()
    assert mode(tmp_path / "audit.jsonl") == 0o600


async def test_jsonl_sink_rotated_file_owner_only(
    tmp_path: Path, common_umask: None
) -> None:
    """The file started by a rotation is owner-only as well."""
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, max_bytes=30, backups=2)
    await sink.deliver([b'{"id":"1","pad":"xxxxxx"}', b'{"id":"2","pad":"xxxxxx"}'])
    sink.close()
    assert backup_path(path, 1).exists()
    assert mode(path) == 0o600
    assert mode(backup_path(path, 1)) == 0o600


async def test_jsonl_sink_existing_file_mode_kept(
    tmp_path: Path, common_umask: None
) -> None:
    """An existing file keeps the mode its operator gave it."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    path.chmod(0o640)
    sink = JsonlSink(path)
    await sink.deliver([b'{"id":"1"}'])
    sink.close()
    assert mode(path) == 0o640
