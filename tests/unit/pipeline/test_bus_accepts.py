"""Best-effort subscribers that accept only some event classes."""

from __future__ import annotations

import anyio
import pytest

from pipeline import Event, EventBus


class FilterPickedThing(Event, frozen=True, kw_only=True):
    n: int


class FilterIgnoredThing(Event, frozen=True, kw_only=True):
    n: int


@pytest.mark.anyio
async def test_bus_accepts_filters_events() -> None:
    """A subscriber with ``accepts`` gets only those events, none dropped."""
    got: list[int] = []
    everything: list[int] = []

    async def picky(event: Event) -> None:
        assert isinstance(event, FilterPickedThing)
        got.append(event.n)

    async def all_of_them(event: Event) -> None:
        assert isinstance(event, FilterPickedThing | FilterIgnoredThing)
        everything.append(event.n)

    bus = EventBus()
    bus.subscribe("picky", picky, max_queue=2, accepts=(FilterPickedThing,))
    bus.subscribe("all", all_of_them)
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        for n in range(6):
            cls = FilterPickedThing if n % 3 == 0 else FilterIgnoredThing
            await bus.publish(cls(n=n))
        await bus.drain(1)
        tg.cancel_scope.cancel()
    assert got == [0, 3]
    assert everything == list(range(6))
    assert bus.stats()["picky"]["dropped"] == 0
