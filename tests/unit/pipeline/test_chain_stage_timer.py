"""The chain's stage timer: the time of each stage without the stages after it.

A stand-in clock replaces ``perf_counter`` in the chain module, and each stage
advances it, so the measured times are exact.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from pipeline import BaseStage, Chain, Context, Next
from pipeline import chain as chain_module


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Advance(BaseStage[Context, str]):
    """Advances the clock by ``config`` seconds before and after the next stage."""

    async def handle(self, ctx: Context, call_next: Next[Context, str]) -> str:
        before, after = self.config
        self.resources.now += before
        response = await call_next(ctx)
        self.resources.now += after
        return response


class Answer(BaseStage[Context, str]):
    terminal: ClassVar[bool] = True

    async def handle(self, ctx: Context, call_next: Next[Context, str]) -> str:
        self.resources.now += self.config
        if self.config < 0:
            raise RuntimeError("backend failed")
        return "ok"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(chain_module, "perf_counter", clock)
    return clock


def build(clock: Clock, answer_seconds: float) -> Chain[Context, str]:
    return Chain(
        [
            Advance(name="outer", config=(1.0, 2.0), resources=clock),
            Advance(name="inner", config=(0.5, 0.0), resources=clock),
            Answer(name="answer", config=answer_seconds, resources=clock),
        ]
    )


@pytest.mark.anyio
async def test_chain_stage_timer_excludes_later_stages(clock: Clock) -> None:
    """Each stage is timed without the stages it called."""
    chain = build(clock, 4.0)
    timings: list[tuple[str, float]] = []
    chain.stage_timer = lambda name, seconds: timings.append((name, seconds))
    assert await chain(Context()) == "ok"
    assert timings == [("answer", 4.0), ("inner", 0.5), ("outer", 3.0)]


@pytest.mark.anyio
async def test_chain_stage_timer_records_failed_stage(clock: Clock) -> None:
    """A stage that raises is timed too, and so are the stages it unwinds."""
    chain = build(clock, -1.0)
    timings: dict[str, float] = {}
    chain.stage_timer = lambda name, seconds: timings.__setitem__(name, seconds)
    with pytest.raises(RuntimeError):
        await chain(Context())
    assert timings == {"answer": -1.0, "inner": 0.5, "outer": 1.0}


@pytest.mark.anyio
async def test_chain_without_stage_timer_reads_no_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a timer the chain does not read the clock at all."""
    reads: list[Any] = []

    def counting_clock() -> float:
        reads.append(1)
        return 0.0

    monkeypatch.setattr(chain_module, "perf_counter", counting_clock)
    clock = Clock()
    assert await build(clock, 1.0)(Context()) == "ok"
    assert reads == []
