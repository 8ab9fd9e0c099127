"""The jsonl sink: size rotation, a chain across files, no duplicate lines."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway.audit.chain import HashChain
from gateway.audit.sinks import JsonlSink, rotated_set
from gateway.audit.verify import expand, verify_chain
from gateway.events import AccessGranted
from pipeline import EventBus, Journal

from .support import make_records

pytestmark = pytest.mark.anyio


async def test_jsonl_rotation_keeps_chain_across_files(tmp_path: Path) -> None:
    """Rotated files stay under max_bytes and verify as one chain."""
    records = make_records(40)
    path = tmp_path / "audit.jsonl"
    max_bytes = 3 * (len(records[0]) + 1) + 20
    sink = JsonlSink(path, max_bytes=max_bytes, backups=50)
    for start in range(0, 40, 7):
        await sink.deliver(records[start : start + 7])
    sink.close()

    files = rotated_set(path)
    assert len(files) > 5
    for member in files:
        assert member.stat().st_size <= max_bytes
    assert b"".join(f.read_bytes() for f in files) == b"".join(
        r + b"\n" for r in records
    )
    report = verify_chain(expand([path]))
    assert report.problem is None
    assert report.records == 40


async def test_jsonl_rotation_deletes_beyond_backups(tmp_path: Path) -> None:
    """Only ``backups`` rotated files are kept; the newest lines survive."""
    records = make_records(30)
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, max_bytes=len(records[0]) * 2 + 10, backups=3)
    for record in records:
        await sink.deliver([record])
    sink.close()

    files = rotated_set(path)
    assert [f.name for f in files] == [
        "audit.jsonl.3",
        "audit.jsonl.2",
        "audit.jsonl.1",
        "audit.jsonl",
    ]
    assert not (tmp_path / "audit.jsonl.4").exists()
    kept = b"".join(f.read_bytes() for f in files).splitlines()
    assert kept == records[-len(kept) :]
    report = verify_chain(files)
    assert report.problem is None
    assert report.anchor is not None


async def test_jsonl_redelivery_writes_no_duplicates(tmp_path: Path) -> None:
    """A batch delivered again after a restart adds only the records not yet written."""
    records = make_records(10)
    path = tmp_path / "audit.jsonl"
    first = JsonlSink(path)
    await first.deliver(records[:6])
    first.close()

    restarted = JsonlSink(path)
    await restarted.deliver(records[3:10])
    restarted.close()
    assert path.read_bytes().splitlines() == records


async def test_jsonl_partial_line_replaced_on_restart(tmp_path: Path) -> None:
    """A line cut short by a crash is dropped and written again whole."""
    records = make_records(4)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(records[0] + b"\n" + records[1] + b"\n" + records[2][:25])

    sink = JsonlSink(path)
    await sink.deliver(records[2:])
    sink.close()
    assert path.read_bytes().splitlines() == records
    assert verify_chain([path]).problem is None


async def test_jsonl_chain_continues_after_journal_lost(tmp_path: Path) -> None:
    """A new journal seeds its chain from the file's last line, so verify passes."""
    path = tmp_path / "audit.jsonl"
    for run in range(2):
        # The second run gets an empty journal directory, as after its removal.
        journal = Journal(tmp_path / f"journal-{run}" / "audit.jsonl.0.journal")
        sink = JsonlSink(path)
        bus = EventBus()
        bus.subscribe_durable(
            "audit.jsonl.0", sink, journal, encode=HashChain(sink.last_record())
        )
        async with anyio.create_task_group() as tg:
            bus.start(tg)
            for n in range(3):
                await bus.publish(AccessGranted(rule=f"run {run} event {n}"))
            await bus.aclose()
            tg.cancel_scope.cancel()

    report = verify_chain([path])
    assert report.problem is None
    assert report.records == 6
    assert report.anchor is None


async def test_jsonl_file_moved_away_starts_new_file(tmp_path: Path) -> None:
    """After an outside tool moves the file, the next batch starts a new one."""
    records = make_records(6)
    path = tmp_path / "audit.jsonl"
    moved = tmp_path / "audit.jsonl.old"
    sink = JsonlSink(path)
    await sink.deliver(records[:3])
    path.rename(moved)
    await sink.deliver(records[3:])
    sink.close()
    assert moved.read_bytes().splitlines() == records[:3]
    assert path.read_bytes().splitlines() == records[3:]
    assert verify_chain([moved, path]).problem is None
