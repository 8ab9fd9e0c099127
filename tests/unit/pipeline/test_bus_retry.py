"""Durable delivery retries: growing, jittered, bounded waits that never give up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest

from pipeline import Event, EventBus, Journal
from pipeline.bus import RetryAfter, _Durable


class RetriedThing(Event, frozen=True, kw_only=True):
    n: int


class FlakySink:
    """Fails the first ``failures`` deliveries, recording when each was tried."""

    def __init__(self, failures: int, *, retry_after: float | None = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.attempts: list[float] = []
        self.lines: list[bytes] = []

    async def deliver(self, batch: Sequence[bytes]) -> None:
        self.attempts.append(anyio.current_time())
        if len(self.attempts) <= self.failures:
            if self.retry_after is not None:
                raise RetryAfter("busy", self.retry_after)
            msg = "destination unavailable"
            raise ConnectionError(msg)
        self.lines.extend(batch)


def test_retry_delay_doubles_within_bounds() -> None:
    """Each wait lies between half and all of a bound that doubles up to retry_max."""
    sub = _Durable("s", FlakySink(0), None, 1, retry_initial=0.1, retry_max=1.0)  # type: ignore[arg-type]
    for attempt, bound in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]):
        for _ in range(50):
            delay = sub.retry_delay(attempt)
            assert bound / 2 <= delay <= bound
    assert sub.retry_delay(10_000) <= 1.0


@pytest.mark.anyio
async def test_bus_durable_keeps_retrying_until_delivered(tmp_path: Path) -> None:
    """Many failures in a row delay delivery but never drop the batch."""
    sink = FlakySink(8)
    bus = EventBus()
    journal = Journal(tmp_path / "audit.journal")
    bus.subscribe_durable(
        "audit", sink, journal, linger=0, retry_initial=0.01, retry_max=0.04
    )
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        for n in range(3):
            await bus.publish(RetriedThing(n=n))
        with anyio.fail_after(5):
            while len(sink.lines) < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert [msgspec.json.decode(line)["n"] for line in sink.lines] == [0, 1, 2]
    assert bus.stats()["audit"]["failures"] == 8
    gaps = [b - a for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
    assert max(gaps) < 0.2


@pytest.mark.anyio
async def test_bus_durable_honours_retry_after(tmp_path: Path) -> None:
    """A sink's RetryAfter makes the bus wait at least that long before retrying."""
    sink = FlakySink(1, retry_after=0.3)
    bus = EventBus()
    journal = Journal(tmp_path / "audit.journal")
    bus.subscribe_durable(
        "audit", sink, journal, linger=0, retry_initial=0.01, retry_max=5.0
    )
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        await bus.publish(RetriedThing(n=1))
        with anyio.fail_after(5):
            while not sink.lines:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert sink.attempts[1] - sink.attempts[0] >= 0.3


@pytest.mark.anyio
async def test_bus_reports_drops_and_depth(tmp_path: Path) -> None:
    """dropped() counts best-effort drops and pending() the journal depth."""
    gate = anyio.Event()

    async def stuck(event: Event) -> None:
        await gate.wait()

    sink = FlakySink(1_000_000)
    bus = EventBus()
    bus.subscribe("stuck", stuck, max_queue=1)
    bus.subscribe_durable(
        "audit", sink, Journal(tmp_path / "a.journal"), retry_initial=10
    )
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        await anyio.sleep(0)
        for n in range(5):
            await bus.publish(RetriedThing(n=n))
        assert bus.pending() == {"audit": 5}
        assert bus.dropped()["stuck"] >= 3
        gate.set()
        tg.cancel_scope.cancel()
