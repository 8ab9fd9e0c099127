"""The bus under back-pressure: cancelled publishers, order, shutdown, crashes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest

from pipeline import Event, EventBus, IntentLog, Journal


class ItemQueued(Event, frozen=True, kw_only=True):
    n: int


class CollectingSink:
    """A durable destination that fails while ``down`` is set."""

    def __init__(self, *, down: bool = False) -> None:
        self.lines: list[bytes] = []
        self.down = down

    async def deliver(self, batch: Sequence[bytes]) -> None:
        if self.down:
            msg = "destination unavailable"
            raise ConnectionError(msg)
        self.lines.extend(batch)


def numbers(lines: Sequence[bytes]) -> list[int]:
    return [msgspec.json.decode(line)["n"] for line in lines]


async def wait_until_delivered(sink: CollectingSink, count: int) -> None:
    with anyio.fail_after(5):
        while len(sink.lines) < count:
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_bus_cancelled_publisher_journals_to_every_sink(tmp_path: Path) -> None:
    """A publisher cancelled while waiting still journals its event everywhere."""
    up, down = CollectingSink(), CollectingSink(down=True)
    bus = EventBus()
    bus.subscribe_durable("up", up, Journal(tmp_path / "up", max_pending=100))
    bus.subscribe_durable(
        "down",
        down,
        Journal(tmp_path / "down", max_pending=2),
        retry_initial=0.01,
        retry_max=0.02,
    )
    after_publish: list[str] = []
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        await bus.publish(ItemQueued(n=0))
        await bus.publish(ItemQueued(n=1))
        assert bus.full_journals() == ["down"]
        scope = anyio.CancelScope()

        async def request() -> None:
            # Like a request whose client leaves: cancelled while its event
            # waits, it still publishes its completion in a cancelled scope.
            with scope:
                try:
                    await bus.publish(ItemQueued(n=2))
                    after_publish.append("continued")
                finally:
                    await bus.publish(ItemQueued(n=3))

        tg.start_soon(request)
        await wait_until_delivered(up, 2)
        scope.cancel()
        await anyio.sleep(0.05)
        assert numbers(up.lines) == [0, 1]
        down.down = False
        await wait_until_delivered(down, 4)
        await wait_until_delivered(up, 4)
        tg.cancel_scope.cancel()
    assert numbers(up.lines) == [0, 1, 2, 3]
    assert numbers(down.lines) == [0, 1, 2, 3]
    assert after_publish == []
    assert bus.full_journals() == []


@pytest.mark.anyio
async def test_bus_released_publishers_append_in_publication_order(
    tmp_path: Path,
) -> None:
    """A publisher that finds space does not overtake ones already waiting."""
    journal = Journal(tmp_path / "j", max_pending=3)
    bus = EventBus()
    bus.subscribe_durable("audit", CollectingSink(), journal)
    for n in range(3):
        await bus.publish(ItemQueued(n=n))
    async with anyio.create_task_group() as tg:
        for n in (3, 4):
            tg.start_soon(bus.publish, ItemQueued(n=n))
            await anyio.sleep(0.01)
        # The delivering task is not running, so the test acknowledges.
        journal.commit(3)
        await bus.publish(ItemQueued(n=5))
    assert numbers(journal.peek(10)) == [3, 4, 5]


@pytest.mark.anyio
async def test_bus_shutdown_journals_waiting_publishers(tmp_path: Path) -> None:
    """On shutdown, events waiting for space go past the bound, not lost."""
    path = tmp_path / "j"
    bus = EventBus()
    bus.subscribe_durable(
        "audit", CollectingSink(down=True), Journal(path, max_pending=1)
    )
    published = anyio.Event()

    async def late() -> None:
        await bus.publish(ItemQueued(n=1))
        published.set()

    async with anyio.create_task_group() as tg:
        bus.start(tg)
        await bus.publish(ItemQueued(n=0))
        tg.start_soon(late)
        await anyio.sleep(0.02)
        assert not published.is_set()
        with anyio.fail_after(2):
            await bus.aclose(timeout=0.05)
        assert published.is_set()
        tg.cancel_scope.cancel()
    assert numbers(Journal(path).peek(10)) == [0, 1]


@pytest.mark.anyio
async def test_bus_restart_repairs_journal_missing_last_append(
    tmp_path: Path,
) -> None:
    """A crash between two journals' appends is repaired from the intent log."""

    def chained(event: Event, previous: bytes | None) -> bytes:
        # Each journal's entries depend on its own predecessor, as the audit
        # hash chain does, so the repair must use this journal's entry.
        assert isinstance(event, ItemQueued)
        after = None if previous is None else msgspec.json.decode(previous)["n"]
        return msgspec.json.encode({"n": event.n, "after": after, "sink": "b"})

    def subscribe(
        bus: EventBus, sink_a: CollectingSink, sink_b: CollectingSink
    ) -> None:
        bus.subscribe_durable("a", sink_a, Journal(tmp_path / "a"))
        bus.subscribe_durable("b", sink_b, Journal(tmp_path / "b"), encode=chained)

    before = EventBus()
    subscribe(before, CollectingSink(down=True), CollectingSink(down=True))
    assert before.attach_intent_log(IntentLog(tmp_path / "intent")) == 0
    for n in range(3):
        await before.publish(ItemQueued(n=n))
    await before.aclose(timeout=0)
    # The process stops after appending event 2 to journal a, before b: the
    # last line of b's journal was never written.
    b_lines = (tmp_path / "b").read_bytes().splitlines(keepends=True)
    (tmp_path / "b").write_bytes(b"".join(b_lines[:-1]))

    sink_a, sink_b = CollectingSink(), CollectingSink()
    after = EventBus()
    subscribe(after, sink_a, sink_b)
    assert after.attach_intent_log(IntentLog(tmp_path / "intent")) == 1
    async with anyio.create_task_group() as tg:
        after.start(tg)
        await wait_until_delivered(sink_a, 3)
        await wait_until_delivered(sink_b, 3)
        await after.aclose()
        tg.cancel_scope.cancel()
    assert numbers(sink_a.lines) == [0, 1, 2]
    assert [msgspec.json.decode(line) for line in sink_b.lines] == [
        {"n": 0, "after": None, "sink": "b"},
        {"n": 1, "after": 0, "sink": "b"},
        {"n": 2, "after": 1, "sink": "b"},
    ]
    again = EventBus()
    subscribe(again, CollectingSink(), CollectingSink())
    assert again.attach_intent_log(IntentLog(tmp_path / "intent")) == 0
    await again.aclose()


def test_intent_log_damaged_record_reads_empty(tmp_path: Path) -> None:
    """A record cut short or overwritten in part reads as no record."""
    intent = IntentLog(tmp_path / "intent")
    intent.write([("a", b'{"n":1}'), ("b", b'{"n":1,"x":2}')])
    assert intent.read() == [("a", b'{"n":1}'), ("b", b'{"n":1,"x":2}')]
    data = (tmp_path / "intent").read_bytes()
    (tmp_path / "intent").write_bytes(data[:-3])
    assert intent.read() == []
    (tmp_path / "intent").write_bytes(data.replace(b'"x":2', b'"x":3'))
    assert intent.read() == []
    intent.close()
