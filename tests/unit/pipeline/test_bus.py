"""The event bus: best-effort drops, durable journals, back-pressure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest

from pipeline import Event, EventBus, Journal, event_union


class ThingHappened(Event, frozen=True, kw_only=True):
    n: int


class CollectingSink:
    """A durable destination that fails while ``down`` is set."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.down = False

    async def deliver(self, batch: Sequence[bytes]) -> None:
        if self.down:
            msg = "destination unavailable"
            raise ConnectionError(msg)
        self.lines.extend(batch)


def numbers(lines: list[bytes]) -> list[int]:
    return [msgspec.json.decode(line)["n"] for line in lines]


@pytest.mark.anyio
async def test_bus_best_effort_drops_are_counted() -> None:
    """A full best-effort queue drops and counts, and publish never waits."""
    gate = anyio.Event()
    seen: list[int] = []

    async def slow(event: Event) -> None:
        await gate.wait()
        assert isinstance(event, ThingHappened)
        seen.append(event.n)

    bus = EventBus()
    bus.subscribe("slow", slow, max_queue=2)
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        await anyio.sleep(0)
        with anyio.fail_after(1):
            for n in range(10):
                await bus.publish(ThingHappened(n=n))
        dropped = bus.stats()["slow"]["dropped"]
        gate.set()
        await bus.drain(1)
        tg.cancel_scope.cancel()
    assert dropped >= 7
    assert len(seen) == 10 - dropped


@pytest.mark.anyio
async def test_bus_failing_subscriber_isolated() -> None:
    """A subscriber that raises does not affect another one."""
    got: list[int] = []

    async def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    async def good(event: Event) -> None:
        assert isinstance(event, ThingHappened)
        got.append(event.n)

    bus = EventBus()
    bus.subscribe("broken", broken)
    bus.subscribe("good", good)
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        for n in range(3):
            await bus.publish(ThingHappened(n=n))
        await bus.drain(1)
        tg.cancel_scope.cancel()
    assert got == [0, 1, 2]


@pytest.mark.anyio
async def test_bus_durable_retries_in_order(tmp_path: Path) -> None:
    """Events published while the sink is down arrive later, in order."""
    sink = CollectingSink()
    sink.down = True
    bus = EventBus()
    journal = Journal(tmp_path / "audit.journal")
    bus.subscribe_durable("audit", sink, journal)
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        for n in range(5):
            await bus.publish(ThingHappened(n=n))
        await anyio.sleep(0.05)
        assert sink.lines == []
        assert bus.stats()["audit"]["failures"] >= 1
        sink.down = False
        with anyio.fail_after(3):
            while len(sink.lines) < 5:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert numbers(sink.lines) == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_journal_survives_restart(tmp_path: Path) -> None:
    """Unacknowledged entries are redelivered by a new journal on the same file."""
    path = tmp_path / "audit.journal"
    journal = Journal(path)
    for n in range(4):
        await journal.append(msgspec.json.encode({"n": n}))
    journal.commit(1)
    journal.close()

    reopened = Journal(path)
    assert reopened.pending == 3
    assert numbers(reopened.peek(10)) == [1, 2, 3]
    reopened.commit(3)
    reopened.close()
    assert Journal(path).pending == 0


@pytest.mark.anyio
async def test_journal_full_applies_back_pressure(tmp_path: Path) -> None:
    """Appending to a full journal waits until an entry is acknowledged."""
    journal = Journal(tmp_path / "j", max_pending=2)
    await journal.append(b'{"n":0}')
    await journal.append(b'{"n":1}')
    appended = anyio.Event()

    async def third() -> None:
        await journal.append(b'{"n":2}')
        appended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(third)
        await anyio.sleep(0.05)
        assert not appended.is_set()
        journal.commit(1)
        with anyio.fail_after(1):
            await appended.wait()
    assert numbers(journal.peek(5)) == [1, 2]


def test_event_union_decodes_by_tag() -> None:
    """Encoded events carry their class name and decode to the right type."""
    union = event_union(Event)
    raw = msgspec.json.encode(ThingHappened(n=3, request_id="r1"))
    assert msgspec.json.decode(raw)["type"] == "ThingHappened"
    decoded = msgspec.json.decode(raw, type=union)
    assert isinstance(decoded, ThingHappened)
    assert decoded.n == 3
